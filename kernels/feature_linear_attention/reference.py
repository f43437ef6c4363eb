"""Reference backend of `feature_linear_attention`: the recurrence one token at a time."""

from __future__ import annotations

import torch


def step(q, k, v, state, eps):
    """One token. q, k `[B, H, F]`, v `[B, H, D]`, state `(S [B, H, F, D], z [B, H, F])`.
    Returns `(output [B, H, D], new state)`."""
    s, z = state
    s = s + k[..., :, None] * v[..., None, :]
    z = z + k
    numerator = torch.einsum("bhf,bhfd->bhd", q, s)
    denominator = (q * z).sum(-1, keepdim=True) + eps
    return numerator / denominator, (s, z)


def feature_linear_attention(q, k, v, initial_state, mask, eps, chunk_size, resets=None):
    """See `hf_seqplugins.kernels.feature_linear_attention` for the contract (inputs arrive validated)."""
    state = initial_state
    outputs = []
    for t, (q_t, k_t, v_t) in enumerate(zip(q.unbind(1), k.unbind(1), v.unbind(1))):
        if resets is not None:
            start = resets[:, t]
            state = (
                torch.where(start[:, None, None, None], 0, state[0]),
                torch.where(start[:, None, None], 0, state[1]),
            )
        output, new_state = step(q_t, k_t, v_t, state, eps)
        if mask is not None:
            real = mask[:, t]
            new_state = (
                torch.where(real[:, None, None, None], new_state[0], state[0]),
                torch.where(real[:, None, None], new_state[1], state[1]),
            )
        state = new_state
        outputs.append(output)
    return torch.stack(outputs, dim=1), state
