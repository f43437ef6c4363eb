"""Reference backend: the plain step-by-step recurrence (`docs/architectures/mamba2.md`, section 'SSD recurrence'),
without the D skip."""

from __future__ import annotations

import math

import torch


def step(x, dt, log_decay, B, C, state):
    """One step. x `[Bt, H, P]`, dt, log_decay `[Bt, H]`, B, C `[Bt, G, N]`, state `[Bt, H, P, N]`.

    Everything in one dtype. Returns `(y [Bt, H, P], state [Bt, H, P, N])` with
    `state = exp(a) state + dt x ⊗ B` and `y = state C` per head (head h reads group h // (H/G)).
    """
    per_group = x.shape[1] // B.shape[1]
    B = B.repeat_interleave(per_group, dim=1)
    C = C.repeat_interleave(per_group, dim=1)
    state = torch.exp(log_decay)[..., None, None] * state + (dt[..., None] * x)[..., :, None] * B[..., None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, C)
    return y, state


def ssd(x, dt, log_decay, B, C, initial_state, mask, chunk_size, resets=None):
    """See `hf_seqplugins.kernels.ssd` for the contract (inputs arrive validated, mask folded in)."""
    log_decay = fold_resets(log_decay, resets)
    dtype = dt.dtype
    batch, _, heads, head_dim = x.shape
    state = (
        initial_state if initial_state is not None else x.new_zeros(batch, heads, head_dim, B.shape[-1], dtype=dtype)
    )
    outputs = []
    for x_t, dt_t, a_t, b_t, c_t in zip(
        x.to(dtype).unbind(1), dt.unbind(1), log_decay.unbind(1), B.to(dtype).unbind(1), C.to(dtype).unbind(1)
    ):
        y, state = step(x_t, dt_t, a_t, b_t, c_t, state)
        outputs.append(y)
    return torch.stack(outputs, dim=1), state


def fold_resets(log_decay: torch.Tensor, resets: torch.Tensor | None) -> torch.Tensor:
    """log_decay `[Bt, T, H]` with -inf where `resets` `[Bt, T]` starts a sequence: exp(-inf) = 0 drops the state."""
    return log_decay if resets is None else torch.where(resets[..., None], -math.inf, log_decay)
