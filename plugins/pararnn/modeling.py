"""ParaRNN model classes: a nonlinear diagonal RNN trained in parallel over the sequence by Newton iterations."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import Cache
from transformers import initialization as init

from hf_seqplugins import (
    SeqForCausalLM,
    SeqForSequenceClassification,
    SeqModel,
    compute_dtype,
    read_state,
    run_by_segments,
    write_state,
)
from hf_seqplugins.kernels.linear_scan.newton import NewtonStats, newton_scan, sequential_scan

from .cells import CELLS
from .configuration import ParaRNNConfig


class ParaRNNMixer(nn.Module):
    """``x [B, T, D] -> cell pre-activations [B, T, rows, N] -> states -> out_proj(cell.output) [B, T, D]``.

    Parameters: the cell's (`A`, ...), the head-block-diagonal input weights `B [NH, D/NH, rows, N/NH]` and bias
    `b [rows, N]`, `out_proj [N -> D]`. The cache holds the last state `[B, N(, m)]`. After every
    parallel solve `newton_stats` holds its `NewtonStats` (logged by
    `hf_seqplugins.kernels.linear_scan.newton.NewtonStatsCallback`).
    """

    def __init__(self, config: ParaRNNConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        width, heads = config.state_width, config.num_heads
        self.cell = CELLS[config.cell](width)
        rows = self.cell.input_rows
        self.B = nn.Parameter(torch.empty(heads, config.hidden_size // heads, rows, width // heads))
        self.b = nn.Parameter(torch.empty(rows, width))
        self.out_proj = nn.Linear(width, config.hidden_size, bias=False)
        self.newton_stats: NewtonStats | None = None

    def init_mixer_weights(self) -> None:
        """Init (`docs/architectures/pararnn.md`, section 'Initialisation'): B Xavier-uniform over (D/NH, N/NH), b the
        cell's `initial_bias()`; the cell's own init."""
        heads, fan_in, _, fan_out = self.B.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        init.uniform_(self.B, -bound, bound)
        init.copy_(self.b, self.cell.initial_bias())
        self.cell.init_cell_weights()

    def preactivations(self, hidden: torch.Tensor) -> torch.Tensor:
        """`[B, T, D] -> [B, T, rows, N]`: each head's slice of the input maps to its slice of the state."""
        heads = self.B.shape[0]
        x = torch.einsum("bthi,hivj->btvhj", hidden.unflatten(-1, (heads, -1)), self.B.to(hidden.dtype))
        return x.flatten(-2) + self.b.to(hidden.dtype)

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden `[B, T, D]`, attention_mask and resets `[B, T]` bool or None -> `[B, T, D]`. Packed sequences
        (`resets`) are solved one per row, each from the cell's zero state."""
        x = self.preactivations(hidden)
        state = read_state(cache, self.layer_idx)
        state = None if state is None else state[0]
        if resets is None:
            states, final = self.scan(x, initial_state=state, mask=attention_mask)
        else:
            states, final = run_by_segments(self.scan, [x], resets, attention_mask, state)
        write_state(cache, self.layer_idx, (final,))
        return self.out_proj(self.cell.output(states).to(hidden.dtype))

    def scan(self, x: torch.Tensor, initial_state: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """Pre-activations `[B, T, rows, N]` -> (states `[B, T, N(, m)]`, final state): a loop for one token or
        `mode="sequential"`, else the parallel Newton solve."""
        config, cell = self.config, self.cell
        compute = compute_dtype(x.dtype)
        state = (
            cell.initial_state(x.shape[0], x.device, compute) if initial_state is None else initial_state.to(compute)
        )
        if x.shape[1] == 1 or config.mode == "sequential":
            states = sequential_scan(cell.step, x.to(compute), state, mask, cell.block)
        else:
            states, self.newton_stats = newton_scan(
                cell.step,
                x,
                state,
                block=cell.block,
                jacobian=getattr(cell, "jacobian", None),
                mask=mask,
                max_iterations=config.newton_max_iterations,
                tolerance=config.newton_tolerance,
                fallback=config.newton_fallback,
                backend=config.kernel_backend,
            )
        return states, states[:, -1]


class ParaRNNModel(SeqModel):
    config_class = ParaRNNConfig
    mixer_class = ParaRNNMixer


class ParaRNNForCausalLM(SeqForCausalLM):
    config_class = ParaRNNConfig
    backbone_class = ParaRNNModel


class ParaRNNForSequenceClassification(SeqForSequenceClassification):
    config_class = ParaRNNConfig
    backbone_class = ParaRNNModel
