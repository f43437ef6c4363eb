"""ParaRNN's Newton engine (`hf_seqplugins.kernels.linear_scan.newton`) vs the sequential loop over the same cell,
forward and forward + backward (the engine's gradients come from the adjoint scan, the loop's from back-propagation
through time): the crossover length where parallel solving pays on this machine. Batch 1 row of D channels."""

from __future__ import annotations

import math

import torch

from hf_seqplugins.kernels.linear_scan.newton import newton_scan, sequential_scan
from hf_seqplugins.plugins.pararnn import ParaGRUCell, ParaLSTMCell

from . import Case

CHANNELS, BATCH = 256, 4


def case(cell_class, steps: int, device: torch.device) -> Case:
    torch.manual_seed(0)
    cell = cell_class(CHANNELS).to(device)
    cell.init_cell_weights()
    x = (torch.randn(BATCH, steps, cell.input_rows, CHANNELS) + cell.initial_bias()).to(device).requires_grad_()
    h0 = cell.initial_state(BATCH, device, torch.float32)

    def newton(backend):
        return lambda: newton_scan(cell.step, x, h0, block=cell.block, jacobian=cell.jacobian, backend=backend)[0]

    implementations = {
        "ours: sequential loop": lambda: sequential_scan(cell.step, x, h0, block=cell.block),
        "ours: newton (torch scan)": newton("torch"),
        "ours: newton (chunked scan)": newton("chunked"),
    }
    if device.type == "cuda":
        implementations["ours: newton (triton scan)"] = newton("triton")
    # per step and channel: a cell step (~30 flops GRU, ~60 LSTM); Newton: ~3 iterations of a step, a Jacobian
    # and a scan of log2(T) rounds; counted here for the loop's work, so GFLOP/s compare like for like
    flops = BATCH * steps * CHANNELS * (30 if cell.block is None else 60)
    name = "ParaGRU" if cell.block is None else "ParaLSTM"
    return Case(
        f"newton ({name})",
        f"B{BATCH} D{CHANNELS} T{steps} (log2 T = {math.log2(steps):.0f})",
        flops,
        [x, *cell.parameters()],
        implementations,
    )


def cases(quick: bool, device: torch.device) -> list[Case]:
    lengths = [32] if quick else [256, 1024, 4096, 16384]
    return [case(cell, steps, device) for cell in (ParaGRUCell, ParaLSTMCell) for steps in lengths]
