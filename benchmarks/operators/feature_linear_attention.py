"""JRT-RNN's causal linear attention on Taylor features (`hf_seqplugins.kernels.feature_linear_attention`): our
backends beside the plain quadratic form it replaces (causal attention with the second-order Taylor kernel
``1 + s + s^2 / 2`` of ``s = q . k / sqrt(f)``, a masked T x T matrix), forward and forward + backward from the
raw queries and keys (the feature map included), B1 H4 f16 (F = 273) D64 at growing lengths."""

from __future__ import annotations

import math

import torch

from hf_seqplugins.kernels.feature_linear_attention import feature_linear_attention, taylor_features

from . import Case

BATCH, HEADS, FEATURES, DIM = 1, 4, 16, 64


def quadratic_taylor_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same outputs from the T x T kernel matrix: q, k `[B, T, H, f]`, v `[B, T, H, D]` -> `[B, T, H, D]`."""
    s = torch.einsum("bihf,bjhf->bhij", q, k) / math.sqrt(q.shape[-1])
    weights = torch.tril(1 + s + s**2 / 2)
    return (weights @ v.transpose(1, 2) / (weights.sum(-1, keepdim=True) + 1e-12)).transpose(1, 2)


def case(steps: int, device: torch.device, quick: bool) -> Case:
    torch.manual_seed(0)
    q = torch.randn(BATCH, steps, HEADS, FEATURES, device=device).requires_grad_()
    k = torch.randn(BATCH, steps, HEADS, FEATURES, device=device).requires_grad_()
    v = torch.randn(BATCH, steps, HEADS, DIM, device=device).requires_grad_()

    def ours(backend: str):
        return lambda: feature_linear_attention(taylor_features(q), taylor_features(k), v, backend=backend)[0]

    implementations = {"ours: torch (chunked)": ours("torch")}
    if quick or steps <= 1024:  # the loop costs T Python steps
        implementations["ours: reference loop"] = ours("reference")
    if steps <= 4096:  # T x T memory
        implementations["quadratic: Taylor-kernel causal attention"] = lambda: quadratic_taylor_attention(q, k, v)
    if device.type == "cuda":
        implementations["ours: triton"] = ours("triton")
    features = 1 + FEATURES + FEATURES**2
    return Case(
        "feature_linear_attention (JRT)",
        f"B{BATCH} H{HEADS} F{features} D{DIM} T{steps}",
        4 * BATCH * steps * HEADS * features * DIM,
        [q, k, v],
        implementations,
    )


def cases(quick: bool, device: torch.device) -> list[Case]:
    lengths = [32] if quick else [256, 1024, 4096]
    return [case(steps, device, quick) for steps in lengths]
