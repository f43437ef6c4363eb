"""Pure-PyTorch backends of `softmax_scan` (`docs/architectures/aaren.md`): the chunked two-level scan ("torch")
and the Hillis-Steele doubling scan ("doubling").

Both work with triples `(m, c, a)` of a set of tokens: its largest score, ``c = sum exp(s - m)`` and
``a = sum exp(s - m) v``. Two disjoint sets, A before B, merge associatively into
``m = max(m_A, m_B)``, ``c = c_A exp(m_A - m) + c_B exp(m_B - m)``, ``a`` likewise. The empty set is
``(-inf, 0, 0)``, the identity: merging it with the empty set would compute ``exp(-inf - (-inf))`` = NaN, so the
merge measures both sides against ``m`` where it is finite and against 0 where it is -inf (both factors are then
``exp(-inf) = 0``). A padded token is the empty set: its score is read as -inf (under a `torch.where`, so NaN or
finite garbage there never reaches a value or a gradient). The initial state `(m0, c0, a0)` is the set of the
tokens before the first one (validation sets m0 = -inf where c0 = 0).

Chunked ("torch"), with L = min(chunk_size, T), the sequence padded at the end to whole chunks with padded
tokens (empty sets, so the final state stays exact for any T):

1. inside every chunk, the running maximum ``M_i = max_{j<=i} s_j`` (a cummax) and the sums over each prefix
   ``c_i = sum_{j<=i} exp(s_j - M_i)``, ``a_i = sum_{j<=i} exp(s_j - M_i) v_j``, all chunks at once: the weights
   form a masked `[L, L]` matrix per chunk, and ``a`` is one batched matmul. Each prefix is measured against its
   own maximum, so every weight is at most 1 and every prefix holds a weight of exactly 1: nothing underflows to
   0 / 0 however far the scores climb inside a chunk. (A plain cumsum of ``exp(s_j - r)`` against one reference
   per chunk would be O(T) instead of O(T L), but a prefix whose scores lie more than ~87 (float32; ~708 in
   float64) below the chunk's reference underflows to 0 / 0.)
2. one sequential pass over the chunks (T / L small updates) merging each chunk's total (its last prefix) into
   the carried state gives the state entering every chunk, and the final state;
3. every prefix's triple merged after the state entering its chunk gives the outputs ``o = a / c``.

Work is O(T L D) (linear in T), memory O(T L) for the weights. Doubling: the T + 1 leaves (the initial state,
then one per token: ``(s, 1, v)``, or the empty set at padding) are scanned inclusively in ceil(log2(T + 1)) steps,
step d merging every position with the one d before it (the empty set before the start); O(T D log T) work.

Outputs at padded steps are those of the held state (unspecified by the contract, finite); where the prefix is
still empty (c = 0) they are 0. Gradients flow to scores, values and all three state tensors by autograd; they do
not depend on which maximum a form measures against, since every form computes the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["merge", "softmax_scan", "softmax_scan_doubling"]


def merge(first, second):
    """The triple of set A then set B from their triples `(m, c, a)` (a with one more trailing dimension than m
    and c); either or both may be the empty set ``(-inf, 0, 0)``."""
    m_1, c_1, a_1 = first
    m_2, c_2, a_2 = second
    m = torch.maximum(m_1, m_2)
    reference = torch.where(m == -torch.inf, 0, m)  # both empty: exp(-inf - 0) = 0 on both sides, never NaN
    scale_1, scale_2 = torch.exp(m_1 - reference), torch.exp(m_2 - reference)
    return m, c_1 * scale_1 + c_2 * scale_2, a_1 * scale_1[..., None] + a_2 * scale_2[..., None]


def _ratio(a, c):
    """``a / c`` with 0 where c = 0 (an empty prefix)."""
    return a / torch.where(c == 0, 1, c)[..., None]


def _real(scores, mask):
    """`[B, T]` True at real tokens."""
    if mask is None:
        return torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device)
    return mask


def softmax_scan(scores, values, initial_state, mask, chunk_size):
    """The chunked two-level scan; see the module docstring and `hf_seqplugins.kernels.softmax_scan` for the
    contract (inputs arrive validated). Internal layout: b batch, h head, n chunk, i/j step in the chunk, d value."""
    batch, steps, heads, dim = values.shape
    length = min(chunk_size, steps)
    pad = -steps % length
    chunks = (steps + pad) // length
    real = F.pad(_real(scores, mask), (0, pad), value=False)  # [b, T']
    real = real.view(batch, 1, chunks, length)
    s = F.pad(scores, (0, 0, 0, pad)).view(batch, chunks, length, heads).permute(0, 3, 1, 2)  # [b, h, n, i]
    s = torch.where(real, s, -torch.inf)
    v = F.pad(values, (0, 0, 0, 0, 0, pad)).view(batch, chunks, length, heads, dim).permute(0, 3, 1, 2, 4)

    # 1. every prefix of every chunk against its own running maximum
    running = s.cummax(-1).values  # [b, h, n, i]; -inf while the chunk has no real token yet
    causal = torch.ones(length, length, dtype=torch.bool, device=s.device).tril()
    counted = causal & real[..., None, :]  # [b, 1, n, i, j]: j <= i and j real, so s_j <= M_i are finite
    # the NaN of -inf - (-inf) where nothing is counted is selected away before exp, so it reaches no gradient
    exponent = torch.where(counted, s[..., None, :] - running[..., :, None], 0)
    weights = torch.where(counted, torch.exp(exponent), 0)  # [b, h, n, i, j]
    local = (running, weights.sum(-1), weights @ v)  # per prefix: m [b, h, n, i], c [b, h, n, i], a [b, h, n, i, d]

    # 2. the states entering the chunks, one merge per chunk
    state = initial_state
    entering = []
    # unbind, not indexing in the loop: each indexing op's backward adds a full-size zero tensor
    totals = (local[0][..., -1], local[1][..., -1], local[2][..., -1, :])  # each chunk's last prefix: [b, h, n, ...]
    for total in zip(*(t.unbind(2) for t in totals)):
        entering.append(state)
        state = merge(state, total)
    m_in, c_in, a_in = (torch.stack(t, dim=2) for t in zip(*entering))  # [b, h, n], [b, h, n], [b, h, n, d]

    # 3. the outputs: the entering state, then each prefix of the chunk
    _, c, a = merge((m_in[..., None], c_in[..., None], a_in[..., None, :]), local)
    outputs = _ratio(a, c).permute(0, 2, 3, 1, 4).reshape(batch, chunks * length, heads, dim)[:, :steps]
    return outputs, state


def softmax_scan_doubling(scores, values, initial_state, mask, chunk_size):
    """The Hillis-Steele scan of the merge over the initial state and the tokens; see the module docstring.
    `chunk_size` is not used."""
    batch, steps, heads, dim = values.shape
    real = _real(scores, mask)[..., None]  # [b, t, 1]
    m0, c0, a0 = initial_state
    m = torch.cat([m0[:, None], torch.where(real, scores, -torch.inf)], dim=1)  # [b, 1 + t, h]
    c = torch.cat([c0[:, None], real.to(scores.dtype).expand(batch, steps, heads)], dim=1)
    a = torch.cat([a0[:, None], torch.where(real[..., None], values, 0)], dim=1)  # [b, 1 + t, h, d]
    shift = 1
    while shift < steps + 1:
        before = (
            F.pad(m[:, :-shift], (0, 0, shift, 0), value=-torch.inf),
            F.pad(c[:, :-shift], (0, 0, shift, 0)),
            F.pad(a[:, :-shift], (0, 0, 0, 0, shift, 0)),
        )
        m, c, a = merge(before, (m, c, a))
        shift *= 2
    return _ratio(a[:, 1:], c[:, 1:]), (m[:, -1], c[:, -1], a[:, -1])
