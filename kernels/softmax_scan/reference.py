"""Reference backend: the online-softmax recurrence one token at a time."""

from __future__ import annotations

import torch


def step(scores, values, state):
    """One token. scores `[B, H]`, values `[B, H, D]`, state `(m [B, H], c [B, H], a [B, H, D])` with m = -inf for
    an empty prefix. Returns `(output [B, H, D], new state)`."""
    m, c, a = state
    new_m = torch.maximum(m, scores)
    keep = torch.exp(m - new_m)  # exp(-inf) = 0 for an empty prefix; new_m is finite after a token
    weight = torch.exp(scores - new_m)
    c = c * keep + weight
    a = a * keep[..., None] + values * weight[..., None]
    return a / c[..., None], (new_m, c, a)


def softmax_scan(scores, values, initial_state, mask, chunk_size, resets=None):
    """See `hf_seqplugins.kernels.softmax_scan` for the contract (inputs arrive validated)."""
    state = initial_state
    outputs = []
    for t, (s_t, v_t) in enumerate(zip(scores.unbind(1), values.unbind(1))):
        if resets is not None:
            state = empty_where(resets[:, t], state)
        output, new_state = step(s_t, v_t, state)
        if mask is not None:
            keep = mask[:, t, None]
            new_state = tuple(
                torch.where(keep.view(*keep.shape, *[1] * (n.dim() - 2)), n, o) for n, o in zip(new_state, state)
            )
            output = torch.where(keep[..., None], output, 0)
        state = new_state
        outputs.append(output)
    return torch.stack(outputs, dim=1), state


def empty_where(starts, state):
    """`state` with the rows where `starts` `[B]` is True emptied (m = -inf, c = 0, a = 0)."""
    m, c, a = state
    rows = starts[:, None]
    return (
        torch.where(rows, -torch.inf, m),
        torch.where(rows, 0, c),
        torch.where(rows[..., None], 0, a),
    )
