"""Fast pure-PyTorch backend: the chunked SSD (`docs/architectures/mamba2.md`, section 'Chunked SSD'), with initial and
final state.

Within a chunk, the log-decay from step j to step i is a masked cumsum (segsum), never
`Acum_i - Acum_j`, which cancels catastrophically; the decay from step j to the chunk end is its
last row. The decay from the chunk start is a plain prefix sum. Chunk states are passed by a loop
over chunks (O(T/Q) small updates, linear in T; the segsum over chunk totals would be quadratic in
T/Q). The sequence is padded at the end up to a whole number of chunks with identity steps
(dt = 0, a = 0, x = B = C = 0), which leave the state exactly unchanged, so the final state stays
exact for any T.

B and C are never repeated over the heads of a group: heads are viewed as `[G, H/G]`, so C·Bᵀ is
formed once per group and broadcast in the batched matmuls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .reference import fold_resets


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """`[..., L]` log-decays -> `[..., L, L]` with `sum_{j < r <= i} a[r]` at `[i, j]` for i >= j and
    -inf above the diagonal, by a masked cumsum.

    Sums below the log of the dtype's smallest normal number are set to -inf too: their exp would be
    subnormal (below 1e-38 in float32, far below any tolerance), and subnormal operands make CPU
    matmuls several times slower, which strong decays over a chunk otherwise trigger everywhere.
    """
    length = a.shape[-1]
    sums = a[..., :, None].expand(*a.shape, length).tril(-1).cumsum(-2)
    causal = torch.ones(length, length, dtype=torch.bool, device=a.device).tril()
    return torch.where(causal & (sums >= math.log(torch.finfo(a.dtype).tiny)), sums, -math.inf)


def ssd(x, dt, log_decay, B, C, initial_state, mask, chunk_size, resets=None):
    """Chunked SSD; see `hf_seqplugins.kernels.ssd` for the contract (inputs arrive validated).

    Internal layout: b batch, c chunk, g group, r head within the group, l/s step within the chunk,
    p head dim, n state size.
    """
    dtype = dt.dtype
    batch, steps, heads, head_dim = x.shape
    groups, state_size = B.shape[-2:]
    # A reset is a step with decay exp(-inf) = 0: every sum of log-decays across it is -inf, so the segsum and
    # the chunk carries drop all earlier state, inside a chunk too (no difference of cumsums ever meets -inf).
    log_decay = fold_resets(log_decay, resets)
    per_group = heads // groups
    length = min(chunk_size, steps)
    pad = -steps % length
    chunks = (steps + pad) // length

    xdt = F.pad(x.to(dtype) * dt[..., None], (0, 0, 0, 0, 0, pad))
    xdt = xdt.view(batch, chunks, length, groups, per_group, head_dim).permute(0, 1, 3, 4, 2, 5)
    a = F.pad(log_decay, (0, 0, 0, pad)).view(batch, chunks, length, groups, per_group).permute(0, 1, 3, 4, 2)
    B, C = (
        F.pad(t.to(dtype), (0, 0, 0, 0, 0, pad)).view(batch, chunks, length, groups, state_size).transpose(2, 3)
        for t in (B, C)
    )

    decay = torch.exp(_segsum(a))  # [b, c, g, r, l, s]
    scores = (C @ B.transpose(-1, -2))[:, :, :, None] * decay
    y = scores @ xdt  # [b, c, g, r, l, p]

    to_end = decay[..., -1, :]
    chunk_states = (xdt * to_end[..., None]).transpose(-1, -2) @ B[:, :, :, None]  # [b, c, g, r, p, n]
    to_start = a.cumsum(-1)
    carry = torch.exp(to_start[..., -1])  # [b, c, g, r]
    if initial_state is None:
        state = chunk_states.new_zeros(batch, groups, per_group, head_dim, state_size)
    else:
        state = initial_state.reshape(batch, groups, per_group, head_dim, state_size)
    entering = []
    # unbind, not indexing in the loop: each indexing op's backward adds a full-size zero tensor
    for carry_c, chunk_state in zip(carry.unbind(1), chunk_states.unbind(1)):
        entering.append(state)
        state = carry_c[..., None, None] * state + chunk_state
    entering = torch.stack(entering, dim=1)

    y = y + torch.exp(to_start)[..., None] * (C[:, :, :, None] @ entering.transpose(-1, -2))
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(batch, chunks * length, heads, head_dim)[:, :steps]
    return y, state.reshape(batch, heads, head_dim, state_size)
