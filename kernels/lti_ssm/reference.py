"""Reference backend: the discretised recurrence, one step at a time."""

from __future__ import annotations

import torch


def lti_ssm(u, system, initial_state, mask, return_final_state):
    """See `hf_seqplugins.kernels.lti_ssm` for the contract (inputs arrive validated, mask folded in)."""
    if hasattr(system, "dense"):  # build S4's dense Ā once, not at every step
        system = system.dense()
    state = (
        initial_state
        if initial_state is not None
        else u.new_zeros(system.state_shape(u.shape[0]), dtype=system.state_dtype)
    )
    outputs = []
    for t, u_t in enumerate(u.unbind(1)):
        y, new_state = system.step(state, u_t)
        state = (
            new_state if mask is None else torch.where(mask[:, t].view(-1, *[1] * (state.dim() - 1)), new_state, state)
        )
        outputs.append(y)
    return torch.stack(outputs, dim=1), state if return_final_state else None
