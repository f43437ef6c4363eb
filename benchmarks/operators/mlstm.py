"""`mlstm`: chunkwise torch vs the step loop, the quadratic form and mlstm_kernels' native chunkwise kernel
(on CUDA also our Triton kernels, mlstm_kernels' TFLA Triton kernel and PyTorch's SDPA at equal shapes).

Inputs are in the operator's layout, q, k, v `[B, T, NH, D]` and gates `[B, T, NH]`; the peers called
directly (TFLA, SDPA) take heads first, `[B, NH, T, ...]`, and get transposed views of the same tensors, as
a model holding `[B, T, NH, D]` activations would hand them (our operator transposes the same way inside)."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from hf_seqplugins.kernels.mlstm import mlstm

from . import Case

HEADS, HEAD_DIM, CHUNK = 4, 64, 64


def case(steps: int, device: torch.device) -> Case:
    """One length: our backends (the step loop and the quadratic form only where they fit) and the peers."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, steps, HEADS, HEAD_DIM, generator=g).to(device).requires_grad_() for _ in range(3))
    igate, fgate = (
        torch.randn(1, steps, HEADS, generator=g).mul(3).add(bias).to(device).requires_grad_() for bias in (-2.0, 4.0)
    )

    def heads_first(*tensors):
        return [t.transpose(1, 2) for t in tensors]

    def ours(backend):
        return lambda: mlstm(q, k, v, igate, fgate, chunk_size=CHUNK, backend=backend)[0]

    implementations = {"ours: torch (chunkwise)": ours("torch")}
    if steps <= 4096:
        implementations["ours: parallel (quadratic)"] = ours("parallel")
    if steps <= 1024:
        implementations["ours: reference (step loop)"] = ours("reference")
    if importlib.util.find_spec("mlstm_kernels") is not None:
        implementations["peer: mlstm_kernels chunkwise native"] = ours("mlstm_kernels")
    if device.type == "cuda":
        implementations["ours: triton (TFLA)"] = ours("triton")
        if importlib.util.find_spec("mlstm_kernels") is not None:
            from mlstm_kernels.torch import get_mlstm_kernel

            tfla = get_mlstm_kernel("chunkwise--triton_xl_chunk")
            implementations["peer: mlstm_kernels triton_xl_chunk"] = lambda: tfla(
                *heads_first(q, k, v, igate, fgate), chunk_size=128
            )
        implementations["torch SDPA (softmax attention)"] = lambda: F.scaled_dot_product_attention(
            *heads_first(q, k, v), is_causal=True
        )
    # the quadratic form's causal half: q k^T and the weighted sum of values, 2 multiply-adds x T^2 / 2 x DK per head
    flops = 2 * HEADS * steps * steps * HEAD_DIM
    return Case(
        "mlstm (exp gate)", f"B1 NH{HEADS} T{steps} DK=DV={HEAD_DIM}", flops, [q, k, v, igate, fgate], implementations
    )


def cases(quick: bool, device: torch.device) -> list[Case]:
    return [case(steps, device) for steps in ([64] if quick else [256, 1024, 4096, 8192])]
