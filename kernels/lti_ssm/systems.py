"""Discretised linear time-invariant state spaces, one class per structure of A (`docs/architectures/s4.md`).

Every system maps inputs `u [Bt, T, H]` (H independent channels) to outputs `y [Bt, T, M, H]` (M output
channels per input channel) through ``x_t = Ā x_{t-1} + B̄ u_t``, ``y_t = C x_t``, and offers what the
operator's backends need:

- `step(state, u_t)`: one recurrence step (the `reference` backend and decoding);
- `kernel(length, generators)`: the convolution kernel `K [M, H, length]`, `K_l = C Ā^l B̄`, computed by
  the `vandermonde` / `cauchy` of a `Generators` pair (PyTorch's or Triton's);
- `free_response(state, length)`: `C Ā^(t+1) x_0` for t < length, the output of an initial state;
- `final_state(u, state)`: the state after the inputs, from the same closed forms (no step loop).

Complex states keep one mode of each conjugate pair where the class says so; outputs are always real.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch

from .generators import Generators, krylov

__all__ = ["DPLRSystem", "DenseSystem", "DiagonalSystem", "System", "select_outputs"]


@dataclass
class DiagonalSystem:
    """S4D: diagonal complex Ā, one mode of each conjugate pair stored.

    `log_a [H, N2]` complex: log Ā (ZOH: ΔΛ; bilinear: log((1 + ΔΛ/2) / (1 - ΔΛ/2))); `b [H, N2]` complex: B̄;
    `c [M, H, N2]` complex. State `[Bt, H, N2]` complex; `y_t = 2 Re sum_n c_n x_{t,n}`.
    """

    log_a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        """(M, H)."""
        return self.c.shape[0], self.c.shape[1]

    def state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.log_a.shape)

    @property
    def state_dtype(self) -> torch.dtype:
        return self.log_a.dtype

    @functools.cached_property
    def a(self) -> torch.Tensor:
        """Ā = exp(log Ā) `[H, N2]` (computed once per system: decoding reuses its system)."""
        return torch.exp(self.log_a)

    def step(self, state: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """state `[Bt, H, N2]`, u `[Bt, H]` -> (y `[Bt, M, H]`, new state)."""
        state = self.a * state + self.b * u[..., None]
        return 2 * torch.einsum("mhn,bhn->bmh", self.c, state).real, state

    def kernel(self, length: int, generators: Generators) -> torch.Tensor:
        (outputs, channels), modes = self.shape, self.log_a.shape[-1]
        v = (self.c * self.b).reshape(-1, modes)
        log_a = self.log_a.expand(outputs, channels, modes).reshape(-1, modes)
        return generators.vandermonde(v, log_a, length).view(outputs, channels, length)

    def free_response(self, state: torch.Tensor, length: int, generators: Generators) -> torch.Tensor:
        """`[Bt, length, M, H]`: 2 Re sum_n c_n Ā_n^(t+1) x_0,n."""
        (outputs, channels), modes = self.shape, self.log_a.shape[-1]
        batch = state.shape[0]
        v = (self.c[None] * (self.a * state)[:, None]).reshape(-1, modes)
        log_a = self.log_a.expand(batch, outputs, channels, modes).reshape(-1, modes)
        return generators.vandermonde(v, log_a, length).view(batch, outputs, channels, length).permute(0, 3, 1, 2)

    def final_state(self, u: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """u `[Bt, T, H]` -> `x_T = Ā^T x_0 + sum_t Ā^(T-1-t) B̄ u_t` `[Bt, H, N2]` (see `_chunked_final_state`)."""
        lags = torch.arange(FINAL_STATE_CHUNK - 1, -1, -1, device=u.device, dtype=u.dtype)
        within = torch.exp(self.log_a[:, None, :] * lags[:, None])  # [H, C, N2]: Ā^(C-1-l)

        def chunk_sums(chunks):  # [Bt, J, C, H] -> [Bt, J, H, N2]
            return self.b * torch.einsum("bjlh,hln->bjhn", chunks.to(within.dtype), within[:, -chunks.shape[2] :])

        across = torch.exp(self.log_a * min(FINAL_STATE_CHUNK, u.shape[1]))
        final = _chunked_final_state(u, chunk_sums, lambda x: across * x)
        return final if state is None else final + torch.exp(u.shape[1] * self.log_a) * state


@dataclass
class DenseSystem:
    """A dense Ā per channel (LSSL's real HiPPO system; S4's DPLR system over all N complex modes).

    `a [H, N, N]`, `b [H, N]`, `c [M, H, N]`, real or complex. State `[Bt, H, N]`; `y_t = Re(c x_t)`.
    """

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return self.c.shape[0], self.c.shape[1]

    def state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.b.shape)

    @property
    def state_dtype(self) -> torch.dtype:
        return self.a.dtype

    def step(self, state: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """state `[Bt, H, N]`, u `[Bt, H]` -> (y `[Bt, M, H]`, new state)."""
        state = torch.einsum("hij,bhj->bhi", self.a, state) + self.b * u[..., None].to(self.b.dtype)
        return torch.einsum("mhn,bhn->bmh", self.c, state).real, state

    def kernel(self, length: int, generators: Generators | None = None) -> torch.Tensor:
        """Krylov kernel: `K[m, h, l] = Re(c Ā^l B̄)` by repeated squaring."""
        columns = krylov(self.a, self.b[..., None], length)[:, :, 0]
        return torch.einsum("mhn,hnl->mhl", self.c, columns).real

    def free_response(self, state: torch.Tensor, length: int, generators: Generators | None = None) -> torch.Tensor:
        """`[Bt, length, M, H]`: Re(c Ā^(t+1) x_0)."""
        start = torch.einsum("hij,bhj->hib", self.a, state)
        return torch.einsum("mhn,hnbt->btmh", self.c, krylov(self.a, start, length)).real

    def final_state(self, u: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """u `[Bt, T, H]` -> `x_T = Ā^T x_0 + sum_t Ā^(T-1-t) B̄ u_t` `[Bt, H, N]` (see `_chunked_final_state`)."""
        chunk = min(FINAL_STATE_CHUNK, u.shape[1])
        within = krylov(self.a, self.b[..., None], chunk)[:, :, 0].flip(-1)  # [H, N, C]: Ā^(C-1-l) B̄
        across = torch.linalg.matrix_power(self.a, chunk)

        def chunk_sums(chunks):  # [Bt, J, C, H] -> [Bt, J, H, N]
            return torch.einsum("hnl,bjlh->bjhn", within, chunks.to(within.dtype))

        final = _chunked_final_state(u, chunk_sums, lambda x: torch.einsum("hij,bhj->bhi", across, x))
        if state is None:
            return final
        return final + torch.einsum("hij,bhj->bhi", torch.linalg.matrix_power(self.a, u.shape[1]), state)


FINAL_STATE_CHUNK = 256


def _chunked_final_state(u, chunk_sums, advance) -> torch.Tensor:
    """The state after u `[Bt, T, H]` from a zero state, without a step loop: T is cut into J chunks of
    C = min(T, FINAL_STATE_CHUNK) steps (zeros prepended, which leave the zero state alone); `chunk_sums` gives each
    chunk's contribution (its inputs weighted by Ā^(C-1-l) B̄, one batched product), and a Horner loop over the
    chunks (`advance`: multiply by Ā^C) adds them up. O(T) work in J steps."""
    batch, steps, channels = u.shape
    chunk = min(FINAL_STATE_CHUNK, steps)
    padded = torch.nn.functional.pad(u, (0, 0, -steps % chunk, 0))
    sums = chunk_sums(padded.view(batch, -1, chunk, channels))
    final = sums[:, 0]
    for j in range(1, sums.shape[1]):
        final = advance(final) + sums[:, j]
    return final


def _both_halves(modes: torch.Tensor) -> torch.Tensor:
    """`[..., N2]` stored modes -> `[..., N]` with their conjugates appended."""
    return torch.cat([modes, modes.conj()], dim=-1)


@dataclass
class DPLRSystem:
    """S4: continuous A = Λ - P P* (diagonal plus rank R), bilinear discretisation with step Δ.

    `lam [H, N2]` complex (Re < 0), `p [R, H, N2]`, `b [H, N2]` complex, `c_tilde [M, H, N2]` complex: the
    learned C̃ = C (I - Ā^length), `dt [H]` real > 0, `length`: the kernel length C̃ refers to (l_max). One
    mode of each conjugate pair is stored. The kernel comes from the generating function at the roots of
    unity (Cauchy sums with the Woodbury identity, no powers of Ā); stepping, the free response and the final
    state use the equivalent `dense()` system over all N modes, with C recovered from C̃.
    Longer kernels double the length: C̃' = C̃ (I + Ā^length).
    """

    lam: torch.Tensor
    p: torch.Tensor
    b: torch.Tensor
    c_tilde: torch.Tensor
    dt: torch.Tensor
    length: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.c_tilde.shape[0], self.c_tilde.shape[1]

    def state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.lam.shape[0], 2 * self.lam.shape[1])

    @property
    def state_dtype(self) -> torch.dtype:
        return self.lam.dtype

    def discretised(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ā `[H, N, N]`, B̄ `[H, N]`) over all N modes: Ā = (I - Δ/2 A)^-1 (I + Δ/2 A), B̄ = (I - Δ/2 A)^-1 Δ B."""
        p = _both_halves(self.p)
        a = torch.diag_embed(_both_halves(self.lam)) - torch.einsum("rhn,rhm->hnm", p, p.conj())
        identity = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        half_step = (self.dt[:, None, None] / 2) * a
        a_bar = torch.linalg.solve(identity - half_step, identity + half_step)
        b_bar = torch.linalg.solve(identity - half_step, self.dt[:, None] * _both_halves(self.b))
        return a_bar, b_bar

    def dense(self) -> DenseSystem:
        """The same system with a dense Ā and C = C̃ (I - Ā^length)^-1 (solved, never inverted)."""
        a_bar, b_bar = self.discretised()
        identity = torch.eye(a_bar.shape[-1], dtype=a_bar.dtype, device=a_bar.device)
        c = torch.linalg.solve(
            identity - torch.linalg.matrix_power(a_bar, self.length),
            _both_halves(self.c_tilde)[:, :, None, :],
            left=False,
        )
        return DenseSystem(a_bar, b_bar, c[:, :, 0, :])

    def c_tilde_of(self, c: torch.Tensor) -> torch.Tensor:
        """C̃ = C (I - Ā^length) `[M, H, N2]` of an ordinary C `[M, H, N2]` (S4 initialises C̃ this way)."""
        return self._doubled(c, self.length, sign=-1)

    def step(self, state: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dense().step(state, u)

    def free_response(self, state: torch.Tensor, length: int, generators: Generators | None = None) -> torch.Tensor:
        return self.dense().free_response(state, length)

    def final_state(self, u: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        return self.dense().final_state(u, state)

    def kernel(self, length: int, generators: Generators) -> torch.Tensor:
        """`K [M, H, length]` from the generating function (`docs/architectures/s4.md`, section 'Convolution kernels'),
        evaluated at `self.length` roots of unity (doubled until it covers `length`) and truncated. The Nyquist node
        ω = -1 takes its analytic value."""
        c_tilde, nodes = self.c_tilde, self.length
        while nodes < length:
            c_tilde = self._doubled(c_tilde, nodes)
            nodes *= 2
        outputs, rank = self.shape[0], self.p.shape[0]
        k = torch.arange(nodes // 2 + 1, device=self.lam.device, dtype=torch.float64)
        omega = torch.exp(-2j * math.pi * k / nodes)
        regular = omega[: (nodes + 1) // 2]  # without the Nyquist node of an even length
        z = (2 * (1 - regular) / (1 + regular)).to(self.lam.dtype)
        w = self.dt[:, None] * self.lam
        left = torch.cat([c_tilde, self.p.conj()])  # C̃_m and P*_r
        right = torch.cat([self.b[None], self.p])  # B and P_s
        v = self.dt[:, None] * left[:, None] * right[None]  # [M + R, 1 + R, H, N2], all with the poles w [H, N2]
        sums = generators.cauchy(v, z, w).permute(2, 3, 0, 1)  # [H, K, M + R, 1 + R]
        r00, r01, r10, r11 = (
            sums[..., :outputs, :1],
            sums[..., :outputs, 1:],
            sums[..., outputs:, :1],
            sums[..., outputs:, 1:],
        )
        identity = torch.eye(rank, dtype=sums.dtype, device=sums.device)
        woodbury = r00 - r01 @ torch.linalg.solve(identity + r11, r10)
        spectrum = (2 / (1 + regular)).to(sums.dtype) * woodbury[..., 0].permute(2, 0, 1)  # [M, H, K]
        if nodes % 2 == 0:
            nyquist = self.dt * (c_tilde * self.b).sum(-1).real
            spectrum = torch.cat([spectrum, nyquist[..., None].to(spectrum.dtype)], dim=-1)
        return torch.fft.irfft(spectrum, n=nodes)[..., :length]

    def _doubled(self, c_tilde: torch.Tensor, length: int, sign: int = 1) -> torch.Tensor:
        """C̃ (I + sign Ā^length): with sign 1 the C̃ of twice the length, as C (I - Ā^2L) = C̃ (I + Ā^L). The pairing
        of conjugate modes is kept, so the stored half is returned."""
        a_bar, _ = self.discretised()
        full = _both_halves(c_tilde)
        doubled = full + sign * torch.einsum("mhi,hij->mhj", full, torch.linalg.matrix_power(a_bar, length))
        return doubled[..., : c_tilde.shape[-1]]


System = DiagonalSystem | DenseSystem | DPLRSystem


def select_outputs(system: System, rows: slice) -> System:
    """The same system with only the output channels `rows` of its C (C̃ for S4)."""
    if isinstance(system, DPLRSystem):
        return replace(system, c_tilde=system.c_tilde[rows])
    return replace(system, c=system.c[rows])
