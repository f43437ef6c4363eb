"""ParaRNN's parallel Newton solver for nonlinear recurrences (`docs/architectures/pararnn.md`).

A cell author writes only the step ``h_t = step(h_{t-1}, x_t)``. The whole sequence of states H solves
``F(H) = 0`` with ``F_t = h_t - step(h_{t-1}, x_t)``; Newton's method linearises it around the current guess:

    A_t = ∂step/∂h (h_{t-1}, x_t),   r_t = step(h_{t-1}, x_t) - h_t,
    δ_t = A_t δ_{t-1} + r_t  (δ_0 = 0),   H <- H + δ,

a *linear* recurrence, solved over the whole sequence at once by `hf_seqplugins.kernels.linear_scan` (log depth
in T). The Jacobians must be diagonal across channels (each channel's next state reads only its own previous
state) or block-diagonal with small m x m blocks (a channel state of m numbers, e.g. an LSTM's `[c, h]`).
They come from the cell's explicit `jacobian(h_prev, x)` or, when it has none, from forward-mode autograd
(one Jacobian-vector product per block column, m in all).

Initial guess: ``h_t = step(h_{t-1}^{guess}, x_t)`` with the guess h_0 at t = 1 and zeros elsewhere, i.e. one
parallel cell step. After k iterations the first k states are exact, so Newton always converges within T
iterations, and in practice (quadratic convergence) in a handful. The loop stops when the residual
``max |F_t|`` is at most `tolerance`, or after `max_iterations`; if the residual is then still above the
tolerance the solve falls back to the sequential loop with a warning (never a silently wrong result).

Gradients are those of the exact solution (implicit differentiation; `docs/architectures/pararnn.md`, section
'Gradients: the adjoint recurrence'), not of the unrolled Newton iterations: the states are returned as
``Y = step(H_prev, x)`` evaluated once with autograd, and a hook replaces the gradient g arriving at Y by the adjoint
``λ_t = g_t + A_{t+1}^T λ_{t+1}`` (the same linear scan run backwards in time); back-propagation through that one step
then gives ``Σ_t λ_t^T ∂step/∂(x_t, θ, h_0)``.

States are computed in float32 for half-precision inputs (errors grow like eps · T; `docs/architectures/pararnn.md`,
section 'Precision and convergence pitfalls').
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from hf_seqplugins import compute_dtype
from hf_seqplugins.kernels.linear_scan import linear_scan

__all__ = ["NewtonStats", "NewtonStatsCallback", "newton_scan", "sequential_scan"]

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class NewtonStats:
    """How a solve went: Newton iterations run, the final residual max |h_t - step(h_{t-1}, x_t)|, whether it
    met the tolerance, and whether it fell back to the sequential loop."""

    iterations: int
    residual: float
    converged: bool
    fell_back: bool = False


def _masked(step: Step, mask: torch.Tensor | None, block: int | None) -> Step:
    """The step, or the identity (the state carried over) where `mask` ([B, T], or [B] for one step) is False."""
    if mask is None:
        return step
    keep = mask[..., None] if block is None else mask[..., None, None]
    return lambda prev, x: torch.where(keep, step(prev, x), prev)


def _jacobian(step: Step, prev: torch.Tensor, x: torch.Tensor, block: int | None) -> torch.Tensor:
    """∂step/∂h at every (prev, x): `[B, T, D]` (diagonal) or `[B, T, D, m, m]` by forward-mode autograd."""
    if block is None:
        return torch.func.jvp(lambda h: step(h, x), (prev,), (torch.ones_like(prev),))[1]
    columns = []
    for j in range(block):
        tangent = torch.zeros_like(prev)
        tangent[..., j] = 1
        columns.append(torch.func.jvp(lambda h: step(h, x), (prev,), (tangent,))[1])
    return torch.stack(columns, dim=-1)


def _previous(states: torch.Tensor, initial_state: torch.Tensor) -> torch.Tensor:
    """`[h_0, h_1, ..., h_{T-1}]` for states `[h_1, ..., h_T]` (time is dimension 1)."""
    return torch.cat([initial_state[:, None], states[:, :-1]], dim=1)


def sequential_scan(
    step: Step, x: torch.Tensor, initial_state: torch.Tensor, mask: torch.Tensor | None = None, block: int | None = None
) -> torch.Tensor:
    """The plain loop ``h_t = step(h_{t-1}, x_t)``: x `[B, T, ...]`, initial state `[B, D(, m)]` -> states
    `[B, T, D(, m)]`. Differentiable by ordinary back-propagation; what generation and the fallback run."""
    state, states = initial_state, []
    # unbind, not x[:, t]: the backward of T slices would write T full-size gradients (quadratic in T)
    for t, x_t in enumerate(x.unbind(1)):
        state = step(state, x_t) if mask is None else _masked(step, mask[:, t], block)(state, x_t)
        states.append(state)
    return torch.stack(states, dim=1)


def newton_scan(
    step: Step,
    x: torch.Tensor,
    initial_state: torch.Tensor,
    *,
    block: int | None = None,
    jacobian: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
    max_iterations: int = 8,
    tolerance: float = 1e-5,
    fallback: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, NewtonStats]:
    """All states of ``h_t = step(h_{t-1}, x_t)`` by parallel Newton iterations (see the module docstring).

    Args:
        step: the cell, `(h_prev [..., D(, m)], x [..., *]) -> h [..., D(, m)]`, broadcasting over leading
            dimensions (the engine calls it on whole sequences `[B, T, ...]`); channels must not mix.
        x: per-step inputs `[B, T, *]` (precomputed projections), the same for every iteration.
        initial_state: h_0 `[B, D]` (diagonal cells) or `[B, D, m]` (block cells).
        block: None for diagonal Jacobians, m for m x m blocks.
        jacobian: optional explicit ∂step/∂h, `(h_prev, x) -> [..., D]` or `[..., D, m, m]`; default autograd.
        mask: `[B, T]` bool, False at padding (the state is carried over there) or None.
        max_iterations, tolerance: stop when max |residual| <= tolerance, or after max_iterations.
        fallback: if still above the tolerance, warn and return the sequential loop's states (else warn only).
        backend: backend of the linear scans (None/"auto", "reference", "torch", "triton").

    Returns `(states [B, T, D(, m)], NewtonStats)`; states in the compute dtype (float32 for half precision).
    """
    dtype = compute_dtype(x.dtype)
    x, initial_state = x.to(dtype), initial_state.to(dtype)
    masked = _masked(step, mask, block)

    def jacobians(prev: torch.Tensor) -> torch.Tensor:
        if jacobian is None:
            return _jacobian(masked, prev, x, block)
        explicit = jacobian(prev, x)
        if mask is None:
            return explicit
        identity = (
            torch.ones_like(explicit)
            if block is None
            else torch.eye(block, dtype=dtype, device=x.device).expand_as(explicit)
        )
        return torch.where(mask.reshape(*mask.shape, *[1] * (explicit.dim() - 2)), explicit, identity)

    with torch.no_grad():
        guess = torch.zeros(x.shape[0], x.shape[1], *initial_state.shape[1:], dtype=dtype, device=x.device)
        states = masked(_previous(guess, initial_state), x)
        iterations, residual = 0, math.inf
        while True:
            prev = _previous(states, initial_state)
            update = masked(prev, x) - states
            residual = update.abs().max().item()
            if residual <= tolerance or iterations == max_iterations or not math.isfinite(residual):
                break
            delta, _ = linear_scan(jacobians(prev), update, backend=backend)
            states = states + delta
            iterations += 1
    stats = NewtonStats(iterations, residual, residual <= tolerance)
    if not stats.converged:
        what = "falling back to the sequential loop" if fallback else "returning the last iterate"
        warnings.warn(
            f"parallel Newton did not converge: residual {residual:.3g} > tolerance {tolerance:g} after "
            f"{iterations} iterations (T={x.shape[1]}); {what}",
            RuntimeWarning,
            stacklevel=2,
        )
        if fallback:  # the loop's states, differentiated by ordinary back-propagation
            stats.fell_back = True
            return sequential_scan(step, x, initial_state, mask, block), stats
    if not torch.is_grad_enabled():
        return states, stats
    prev = _previous(states, initial_state)
    with torch.no_grad():
        adjoint_transitions = jacobians(prev)
    output = masked(prev, x)
    if output.requires_grad:
        output.register_hook(lambda grad: _adjoint(grad, adjoint_transitions, block, backend))
    return output, stats


def _adjoint(grad: torch.Tensor, transitions: torch.Tensor, block: int | None, backend: str | None) -> torch.Tensor:
    """λ_t = g_t + A_{t+1}^T λ_{t+1}, λ_T = g_T: the linear scan over reversed time with transposed, shifted A."""
    following = torch.cat([transitions[:, 1:], torch.zeros_like(transitions[:, :1])], dim=1)
    if block is not None:
        following = following.transpose(-1, -2)
    adjoint, _ = linear_scan(following.flip(1), grad.to(transitions.dtype).flip(1), backend=backend)
    return adjoint.flip(1).to(grad.dtype)


class NewtonStatsCallback(TrainerCallback):
    """Adds `newton_iterations` (most in any layer), `newton_residual` (largest) and `newton_fallbacks` (count) over
    the steps since the last log to `Trainer`'s logs, from every module with a `newton_stats` attribute
    (a `NewtonStats`, set at each forward). Insert it first so the printed and recorded logs include them:
    ``trainer.callback_handler.callbacks.insert(0, NewtonStatsCallback())``."""

    def __init__(self):
        self._reset()

    def _reset(self):
        self.iterations, self.residual, self.fallbacks = 0, 0.0, 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        for module in [] if model is None else model.modules():
            stats = getattr(module, "newton_stats", None)
            if isinstance(stats, NewtonStats):
                self.iterations = max(self.iterations, stats.iterations)
                self.residual = max(self.residual, stats.residual)
                self.fallbacks += stats.fell_back

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:
            values = {
                "newton_iterations": self.iterations,
                "newton_residual": self.residual,
                "newton_fallbacks": self.fallbacks,
            }
            logs.update(values)
            if state.log_history:
                state.log_history[-1].update(values)
            self._reset()
