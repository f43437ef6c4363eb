"""`headwise_rnn` (LSTM / GRU cells) vs torch.nn's fused kernels and FlashRNN's vanilla kernels."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from hf_seqplugins.kernels.rnn import headwise_rnn
from hf_seqplugins.plugins.rnn import GRU, LSTM

from . import Case

LAYERS = {"lstm": (torch.nn.LSTM, LSTM), "gru": (torch.nn.GRU, GRU)}


def operator_call(layer, cell: str, backend: str, x: torch.Tensor):
    """The layer's math through `headwise_rnn` with `backend`, input projection included."""
    hidden = layer.hidden_size
    gates = layer.weight_ih_l0.shape[0] // hidden

    def run():
        gates_x = F.linear(x, layer.weight_ih_l0, layer.bias_ih_l0).view(x.shape[0], x.shape[1], gates, 1, hidden)
        recurrent_weight = layer.weight_hh_l0.view(gates, 1, hidden, hidden)
        return headwise_rnn(cell, gates_x, recurrent_weight, layer.bias_hh_l0.view(gates, 1, hidden), backend=backend)[
            0
        ]

    return run


def case(cell: str, batch: int, steps: int, hidden: int, device: torch.device) -> Case:
    """One shape: torch.nn's layer, our drop-in layer on `reference`, the operator's backends and FlashRNN."""
    torch.manual_seed(0)
    theirs_class, ours_class = LAYERS[cell]
    x = torch.randn(batch, steps, hidden, device=device, requires_grad=True)
    theirs = theirs_class(hidden, hidden, batch_first=True).to(device)
    drop_in = ours_class(hidden, hidden, batch_first=True, backend="reference").to(device)
    drop_in.load_state_dict(theirs.state_dict())
    implementations = {
        f"torch.nn.{cell.upper()} (fused)": lambda: theirs(x)[0],
        "ours: reference": lambda: drop_in(x)[0],
    }
    backends = (
        ["torch"]
        + (["triton"] if device.type == "cuda" else [])
        + (["flashrnn"] if importlib.util.find_spec("flashrnn") else [])
    )
    for backend in backends:
        implementations["peer: flashrnn vanilla" if backend == "flashrnn" else f"ours: {backend}"] = operator_call(
            theirs, cell, backend, x
        )
    gates = 4 if cell == "lstm" else 3
    flops = 2 * 2 * batch * steps * gates * hidden * hidden  # input and recurrent matmuls
    return Case(f"headwise_rnn ({cell})", f"B{batch} T{steps} H{hidden}", flops, [x], implementations)


def cases(quick: bool, device: torch.device) -> list[Case]:
    shapes = [(2, 32, 64)] if quick else [(1, 256, 256), (16, 256, 256), (16, 64, 512)]
    return [case(cell, *shape, device) for cell in LAYERS for shape in shapes]
