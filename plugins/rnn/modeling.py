"""The RNN family's mixer and model classes: Elman, LSTM, GRU and sLSTM language models."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import Cache
from transformers import initialization as init

from hf_seqplugins import SeqForCausalLM, SeqForSequenceClassification, SeqModel, read_state, write_state
from hf_seqplugins.kernels.rnn import NUM_GATES, headwise_rnn

from .configuration import ElmanConfig, GRUConfig, HeadwiseRNNConfig, LSTMConfig, SLSTMConfig


class HeadwiseRNNMixer(nn.Module):
    """in_proj -> head-wise recurrence -> out_proj.

    `in_proj` `[D -> G*NH*DH]` gives the input part of every gate (its bias is PyTorch's `b_ih`);
    `recurrent_weight` `[G, NH, DH, DH]` and `recurrent_bias` `[G, NH, DH]` are the block-diagonal
    `W_hh`, `b_hh`; `out_proj` `[NH*DH -> D]` mixes the heads back into the residual stream.
    """

    def __init__(self, config: HeadwiseRNNConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.cell = config.cell_name
        self.num_gates = NUM_GATES[self.cell]
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        inner = self.num_heads * self.head_dim
        self.in_proj = nn.Linear(config.hidden_size, self.num_gates * inner)
        self.recurrent_weight = nn.Parameter(torch.empty(self.num_gates, self.num_heads, self.head_dim, self.head_dim))
        self.recurrent_bias = nn.Parameter(torch.empty(self.num_gates, self.num_heads, self.head_dim))
        self.out_proj = nn.Linear(inner, config.hidden_size, bias=False)

    def init_mixer_weights(self) -> None:
        """PyTorch's U(-1/sqrt(DH), 1/sqrt(DH)) for the recurrence; sLSTM as in xLSTM (`docs/architectures/rnn.md`,
        section 'Initialisation'): zero recurrent weights and a forget-gate bias spread per head from +5 down to -7."""
        bound = 1.0 / math.sqrt(self.head_dim)
        init.zeros_(self.recurrent_bias)
        if self.cell != "slstm":
            init.uniform_(self.recurrent_weight, -bound, bound)
            return
        init.zeros_(self.recurrent_weight)
        depth = self.layer_idx / max(self.config.num_hidden_layers - 1, 1)
        ramp = torch.linspace(0, 1, self.head_dim) ** (0.3 + 1.3 * depth)
        bias = torch.zeros(self.num_gates, self.num_heads, self.head_dim)
        bias[1] = -(-5 + 12 * ramp)
        init.copy_(self.in_proj.bias, bias.flatten())

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden `[B, T, D]`, attention_mask `[B, T]` bool or None, resets `[B, T]` bool or None -> `[B, T, D]`."""
        batch, steps, _ = hidden.shape
        gates_x = self.in_proj(hidden).view(batch, steps, self.num_gates, self.num_heads, self.head_dim)
        outputs, final_state = headwise_rnn(
            self.cell,
            gates_x,
            self.recurrent_weight,
            self.recurrent_bias,
            initial_state=read_state(cache, self.layer_idx),
            mask=attention_mask,
            normalizer_clamp=getattr(self.config, "slstm_normalizer_clamp", True),
            resets=resets,
            backend=self.config.kernel_backend,
        )
        write_state(cache, self.layer_idx, final_state)
        return self.out_proj(outputs.reshape(batch, steps, -1))


class ElmanModel(SeqModel):
    config_class = ElmanConfig
    mixer_class = HeadwiseRNNMixer


class ElmanForCausalLM(SeqForCausalLM):
    config_class = ElmanConfig
    backbone_class = ElmanModel


class ElmanForSequenceClassification(SeqForSequenceClassification):
    config_class = ElmanConfig
    backbone_class = ElmanModel


class LSTMModel(SeqModel):
    config_class = LSTMConfig
    mixer_class = HeadwiseRNNMixer


class LSTMForCausalLM(SeqForCausalLM):
    config_class = LSTMConfig
    backbone_class = LSTMModel


class LSTMForSequenceClassification(SeqForSequenceClassification):
    config_class = LSTMConfig
    backbone_class = LSTMModel


class GRUModel(SeqModel):
    config_class = GRUConfig
    mixer_class = HeadwiseRNNMixer


class GRUForCausalLM(SeqForCausalLM):
    config_class = GRUConfig
    backbone_class = GRUModel


class GRUForSequenceClassification(SeqForSequenceClassification):
    config_class = GRUConfig
    backbone_class = GRUModel


class SLSTMModel(SeqModel):
    config_class = SLSTMConfig
    mixer_class = HeadwiseRNNMixer


class SLSTMForCausalLM(SeqForCausalLM):
    config_class = SLSTMConfig
    backbone_class = SLSTMModel


class SLSTMForSequenceClassification(SeqForSequenceClassification):
    config_class = SLSTMConfig
    backbone_class = SLSTMModel
