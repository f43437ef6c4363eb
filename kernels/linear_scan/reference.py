"""Reference backend: the linear recurrence one step at a time."""

from __future__ import annotations

import torch


def apply(a: torch.Tensor, state: torch.Tensor, blocks: bool) -> torch.Tensor:
    """`a s` per channel: elementwise (a, s `[B, D]`) or a matrix-vector product per channel (a `[B, D, m, m]`)."""
    return (a @ state[..., None])[..., 0] if blocks else a * state


def linear_scan(a, b, initial_state, blocks):
    """See `hf_seqplugins.kernels.linear_scan` for the contract (inputs arrive validated)."""
    state = initial_state if initial_state is not None else torch.zeros_like(b[:, 0])
    states = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        state = apply(a_t, state, blocks) + b_t
        states.append(state)
    return torch.stack(states, dim=1), state
