"""`ssd` (Mamba-2): chunked torch vs the step loop and transformers' pure-torch chunk scan (on CUDA also our
Triton kernels and mamba_ssm's when it is installed), at equal inputs."""

from __future__ import annotations

import importlib.util

import torch

from hf_seqplugins.kernels.ssd import ssd

from . import Case

HEADS, HEAD_DIM, STATE, CHUNK = 8, 64, 64, 64


def case(steps: int, device: torch.device) -> Case:
    """One length; the step loop only where it fits in a benchmark run."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, steps, HEADS, HEAD_DIM, generator=g).to(device).requires_grad_()
    dt = torch.nn.functional.softplus(torch.randn(1, steps, HEADS, generator=g) - 3).to(device).requires_grad_()
    A = -torch.linspace(1, 16, HEADS, device=device)
    B, C = (torch.randn(1, steps, 1, STATE, generator=g).to(device).requires_grad_() for _ in range(2))

    def ours(backend):
        return lambda: ssd(x, dt, dt * A, B, C, chunk_size=CHUNK, backend=backend)[0]

    implementations = {
        "ours: torch (chunked)": ours("torch"),
        "peer: transformers mamba2_chunk_scan": ours("transformers"),
    }
    if steps <= 1024:
        implementations["ours: reference (step loop)"] = ours("reference")
    if device.type == "cuda":
        implementations["ours: triton"] = ours("triton")
        if importlib.util.find_spec("mamba_ssm") is not None:
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            implementations["peer: mamba_ssm chunk scan"] = lambda: mamba_chunk_scan_combined(
                x, dt, A, B, C, chunk_size=CHUNK
            )
    # multiply-adds per token and head of the chunked form: C.B and the weighted sum of x over the causal half of
    # a chunk, plus writing the chunk state and reading it back (P x N each)
    flops = 2 * HEADS * steps * (CHUNK * (STATE + HEAD_DIM) // 2 + 2 * HEAD_DIM * STATE)
    return Case("ssd (Mamba-2)", f"B1 H{HEADS} T{steps} P={HEAD_DIM} N={STATE}", flops, [x, dt, B, C], implementations)


def cases(quick: bool, device: torch.device) -> list[Case]:
    return [case(steps, device) for steps in ([64] if quick else [256, 1024, 4096, 8192])]
