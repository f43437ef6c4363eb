"""HiPPO matrices and S4's normal-plus-low-rank diagonalisation (`docs/architectures/s4.md`, section 'HiPPO matrices'),
in float64."""

from __future__ import annotations

import torch

__all__ = ["MEASURES", "hippo", "nplr_legs"]


def _legs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = torch.sqrt(2 * torch.arange(size, dtype=torch.float64) + 1)
    a = -torch.tril(root[:, None] * root[None, :], diagonal=-1) - torch.diag(
        torch.arange(1, size + 1, dtype=torch.float64)
    )
    return a, root


def _legt(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = torch.arange(size, dtype=torch.float64)
    root = torch.sqrt(2 * n + 1)
    sign = torch.where((n[:, None] - n[None, :]) % 2 == 0, 1.0, -1.0).to(torch.float64)
    pattern = torch.where(n[:, None] >= n[None, :], 1.0, sign).to(torch.float64)
    return -0.5 * root[:, None] * root[None, :] * pattern, 0.5 * root


MEASURES = {"legs": _legs, "legt": _legt}


def hippo(measure: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The continuous HiPPO system `(A [N, N], B [N])` of a measure ("legs" or "legt")."""
    return MEASURES[measure](size)


def nplr_legs(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """HiPPO-LegS as `A = V (Λ - P̃ P̃*) V*` with V unitary; returns `(Λ, P̃, B̃, V)`: `[N/2]` complex128 each for the
    modes with negative imaginary part (their conjugates are implied), B̃ = V* B and P̃ = V* P with P_n = sqrt(n + 1/2),
    and their eigenvectors `V [N, N/2]` (the other half of V is their conjugate)."""
    a, b = _legs(size)
    p = torch.sqrt(torch.arange(size, dtype=torch.float64) + 0.5)
    normal = a + p[:, None] * p[None, :]  # -1/2 I + a skew-symmetric part
    real = torch.diagonal(normal).mean()
    frequencies, vectors = torch.linalg.eigh(-1j * (normal - real * torch.eye(size, dtype=torch.float64)))
    keep = torch.argsort(frequencies)[: size // 2]
    lam = real + 1j * frequencies[keep]
    project = vectors[:, keep].conj().T
    return lam, project @ p.to(project.dtype), project @ b.to(project.dtype), vectors[:, keep]
