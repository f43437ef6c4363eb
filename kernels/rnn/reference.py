"""Reference backend: the plain step-by-step recurrence, written for reading, used as ground truth."""

from __future__ import annotations

import torch

from .cells import step, zero_where


def headwise_rnn(
    cell: str,
    gates_x: torch.Tensor,
    recurrent_weight: torch.Tensor,
    recurrent_bias: torch.Tensor | None,
    initial_state: tuple[torch.Tensor, ...],
    mask: torch.Tensor | None,
    projection: torch.Tensor | None,
    normalizer_clamp: bool,
    resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """See `hf_seqplugins.kernels.rnn.headwise_rnn` for the contract (inputs arrive validated)."""
    state = initial_state
    outputs = []
    for t, gates_x_t in enumerate(gates_x.unbind(1)):
        if resets is not None:
            state = zero_where(resets[:, t], state)
        new_state = step(cell, gates_x_t, state, recurrent_weight, recurrent_bias, projection, normalizer_clamp)
        if mask is not None:
            keep = mask[:, t].view(-1, 1, 1)
            new_state = tuple(torch.where(keep, new, old) for new, old in zip(new_state, state))
        state = new_state
        outputs.append(state[0])
    return torch.stack(outputs, dim=1), state
