"""Fast pure-PyTorch backend: one batched matmul per step over all heads and gates.

There is no time-parallel form for these nonlinear cells (see `docs/architectures/rnn.md`, section 'Algorithm forms');
the speed comes from hoisting everything that does not depend on h out of the loop and issuing a single
`bmm` per step for the block-diagonal recurrent matrix.
"""

from __future__ import annotations

import torch

from .cells import pointwise, zero_where


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
    batch, steps, gates, heads, head_dim = gates_x.shape
    # [G, NH, DH, DR] -> [NH, DR, G*DH]: h[n] @ weight[n] yields every gate of head n at once.
    weight = recurrent_weight.permute(1, 3, 0, 2).reshape(heads, -1, gates * head_dim)
    bias = None if recurrent_bias is None else recurrent_bias.permute(1, 0, 2).reshape(heads, 1, gates * head_dim)
    state = initial_state
    keep = None if mask is None else mask.view(batch, steps, 1, 1)
    # A list stacked once: writing into a preallocated tensor would make every step's backward copy all of it.
    outputs = []
    # unbind, not gates_x[:, t]: each indexing op's backward would add a full-size zero tensor (O(T^2)).
    for t, gates_x_t in enumerate(gates_x.unbind(1)):
        if resets is not None:
            state = zero_where(resets[:, t], state)
        h_heads = state[0].transpose(0, 1)
        rec = torch.bmm(h_heads, weight) if bias is None else torch.baddbmm(bias, h_heads, weight)
        rec = rec.view(heads, batch, gates, head_dim).permute(1, 2, 0, 3)
        new_state = pointwise(cell, gates_x_t, rec, state, projection, normalizer_clamp)
        if keep is not None:
            new_state = tuple(torch.where(keep[:, t], new, old) for new, old in zip(new_state, state))
        state = new_state
        outputs.append(state[0])
    return torch.stack(outputs, dim=1), state
