"""SSM convolution-kernel generators in plain PyTorch (autograd through complex tensors).

These are the two reductions of spec 0.3 that the `triton` backend fuses (`triton_impl` has the same
functions with the same contracts), plus the Krylov matrix of LSSL (dense matmuls, no Triton needed).
They materialise `[rows, N/2, L]` (Vandermonde) or `[rows, L', N/2]` (Cauchy) complex intermediates.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

__all__ = ["TORCH_GENERATORS", "Generators", "cauchy", "krylov", "vandermonde"]


class Generators(NamedTuple):
    """The two reductions a convolution backend makes its kernels with (same contracts as below)."""

    vandermonde: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    cauchy: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def vandermonde(v: torch.Tensor, log_a: torch.Tensor, length: int) -> torch.Tensor:
    """`K[r, l] = 2 Re sum_n v[r, n] exp(l * log_a[r, n])` for l < length (spec 1.5, conjugate pairs).

    v, log_a `[R, N2]` complex -> K `[R, length]` real (v's real dtype)."""
    steps = torch.arange(length, device=v.device, dtype=v.real.dtype)
    powers = torch.exp(log_a[..., None] * steps)
    return 2 * torch.einsum("rn,rnl->rl", v, powers).real


def cauchy(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`out[r, k] = sum_n v[r, n] / (z[k] - w[r, n]) + conj(v[r, n]) / (z[k] - conj(w[r, n]))` (spec 1.6: the
    sum over all N modes when only one of each conjugate pair is stored).

    v, w `[R, N2]` complex, z `[K]` complex -> `[R, K]` complex."""
    z = z[:, None]
    return (v[:, None, :] / (z - w[:, None, :]) + v.conj()[:, None, :] / (z - w.conj()[:, None, :])).sum(-1)


def krylov(a: torch.Tensor, x: torch.Tensor, length: int) -> torch.Tensor:
    """`[x, a x, a^2 x, ..., a^(length-1) x]` by repeated squaring (spec 2.1, about log2(length) matmuls).

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
