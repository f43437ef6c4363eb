"""SSM convolution-kernel generators in plain PyTorch (autograd through complex tensors).

These are the two reductions (`docs/architectures/s4.md`, section 'Convolution kernels') that the `triton` backend fuses
(`triton_impl` has the same functions with the same contracts), plus the Krylov matrix of LSSL (dense matmuls, no Triton
needed). They materialise `[rows, N/2, L]` (Vandermonde) or `[rows, L', N/2]` (Cauchy) complex intermediates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = ["TORCH_GENERATORS", "Generators", "cauchy", "krylov", "vandermonde"]


class Generators(NamedTuple):
    """The two reductions a convolution backend makes its kernels with (same contracts as below)."""

    vandermonde: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    cauchy: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def vandermonde(v: torch.Tensor, log_a: torch.Tensor, length: int) -> torch.Tensor:
    """`K[r, l] = 2 Re sum_n v[r, n] exp(l * log_a[r, n])` for l < length (one mode of each conjugate pair stored).

    v, log_a `[R, N2]` complex -> K `[R, length]` real (v's real dtype). The powers `exp(l log_a)` are products
    `exp(j B log_a) exp(i log_a)` over l = j B + i (B = `POWER_BLOCK`): two small sets of complex exponentials
    and one multiplication per entry instead of one exponential per entry."""
    block = min(length, POWER_BLOCK)
    real = v.real.dtype
    within = torch.exp(log_a[..., None, None] * torch.arange(block, device=v.device, dtype=real))
    across = torch.exp(log_a[..., None, None] * torch.arange(0, length, block, device=v.device, dtype=real)[:, None])
    powers = (across * within).flatten(-2)[..., :length]
    return 2 * torch.einsum("rn,rnl->rl", v, powers).real


POWER_BLOCK = 64


def cauchy(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`out[..., r, k] = sum_n v[..., r, n] / (z[k] - w[r, n]) + conj(v[..., r, n]) / (z[k] - conj(w[r, n]))` (S4's
    Cauchy sums: the sum over all N modes when only one of each conjugate pair is stored).

    v `[..., R, N2]` complex (leading dimensions share the poles w), w `[R, N2]` complex, z `[K]` complex (no
    gradient) -> `[..., R, K]` complex. Computed in blocks of nodes with an analytic backward (see `_Cauchy`):
    memory stays at one block of `[R, K_block, N2]`, and the reciprocals are formed once for all of v's rows."""
    if z.requires_grad:
        raise ValueError("cauchy: the nodes z get no gradient; pass them detached")
    return _Cauchy.apply(v, z, w)


NODE_BLOCK_ELEMENTS = 1 << 22


def _node_blocks(z: torch.Tensor, w: torch.Tensor):
    """Slices of the nodes with their inverse distances `c = 1 / (z - w)`, `e = 1 / (conj(z) - w)` `[R, k, N2]`."""
    size = max(1, NODE_BLOCK_ELEMENTS // max(1, w.numel()))
    for start in range(0, z.shape[0], size):
        nodes = z[start : start + size, None]
        yield slice(start, start + size), 1 / (nodes - w[:, None, :]), 1 / (nodes.conj() - w[:, None, :])


class _Cauchy(torch.autograd.Function):
    """The Cauchy sums without autograd's saved `[R, K, N2]` intermediates. With G the output's gradient,
    P = sum_k conj(G_k) c_k + G_k e_k and P2 = the same with c_k^2, e_k^2: grad v = conj(P), grad w = conj(v P2)
    summed over v's leading dimensions (the first term of out is holomorphic in (v, w), the other anti-holomorphic)."""

    @staticmethod
    def forward(ctx, v, z, w):
        ctx.save_for_backward(v, z, w)
        out = torch.empty(*v.shape[:-1], z.shape[0], dtype=v.dtype, device=v.device)
        for nodes, c, e in _node_blocks(z, w):
            out[..., nodes] = torch.einsum("rkn,...rn->...rk", c, v) + torch.einsum("rkn,...rn->...rk", e, v).conj()
        return out

    @staticmethod
    def backward(ctx, grad):
        v, z, w = ctx.saved_tensors
        p, p2 = torch.zeros_like(v), torch.zeros_like(v)
        for nodes, c, e in _node_blocks(z, w):
            g = grad[..., nodes]
            p += torch.einsum("...rk,rkn->...rn", g.conj(), c) + torch.einsum("...rk,rkn->...rn", g, e)
            p2 += torch.einsum("...rk,rkn->...rn", g.conj(), c * c) + torch.einsum("...rk,rkn->...rn", g, e * e)
        grad_w = (v * p2).conj().reshape(-1, *w.shape).sum(0)
        return p.conj(), None, grad_w


def krylov(a: torch.Tensor, x: torch.Tensor, length: int) -> torch.Tensor:
    """`[x, a x, a^2 x, ..., a^(length-1) x]` by repeated squaring (LSSL's Krylov matrix, about log2(length) matmuls).

    a `[H, N, N]`, x `[H, N, K]` (K vectors per channel) -> `[H, N, K, length]`."""
    columns = x[..., None]
    power = a
    while columns.shape[-1] < length:
        more = torch.einsum("hij,hjkw->hikw", power, columns)
        columns = torch.cat([columns, more], dim=-1)
        if columns.shape[-1] < length:
            power = power @ power
    return columns[..., :length]


TORCH_GENERATORS = Generators(vandermonde, cauchy)
