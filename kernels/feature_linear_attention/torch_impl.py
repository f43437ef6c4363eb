"""Chunked PyTorch backend of `feature_linear_attention` (`docs/architectures/jrt.md`).

With L = min(chunk_size, T) and the sequence padded at the end to whole chunks with zero features and values
(which add nothing, so the final state stays exact for any T), per chunk n and position i in it:

1. inside the chunk: the masked matrix ``A_ij = q_i . k_j`` for j <= i, then ``A v`` (numerator) and the row sums
   of ``A`` (denominator), all chunks at once (batched matmuls, `[L, L]` per chunk);
2. between chunks: each chunk's ``sum k_j v_j^T`` `[F, D]` and ``sum k_j`` `[F]`, and the states entering every
   chunk as the initial state plus an exclusive cumulative sum over the chunks;
3. ``y_i = (q_i^T S_in + (A v)_i) / (q_i . z_in + sum_j A_ij + eps)``.

Work O(T (L F + L D + F D)), memory O(T L + (T / L) F D). Padded positions arrive as zero q, k, v (validation), so
they add nothing to the state. Gradients by autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["feature_linear_attention"]


def feature_linear_attention(q, k, v, initial_state, mask, eps, chunk_size):
    """See the module docstring and `hf_seqplugins.kernels.feature_linear_attention` for the contract (inputs arrive
    validated). Internal layout: b batch, h head, n chunk, i/j step in the chunk, f feature, d value."""
    batch, steps, heads, features = q.shape
    dim = v.shape[-1]
    length = min(chunk_size, steps)
    pad = -steps % length
    chunks = (steps + pad) // length

    def chunked(x):  # [b, T, h, e] -> [b, h, n, i, e]
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(batch, chunks, length, heads, x.shape[-1]).permute(0, 3, 1, 2, 4)

    qc, kc, vc = chunked(q), chunked(k), chunked(v)
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    scores = torch.where(causal, qc @ kc.transpose(-1, -2), 0)  # [b, h, n, i, j]
    s_0, z_0 = initial_state
    kv = kc.transpose(-1, -2) @ vc  # [b, h, n, f, d]
    k_sum = kc.sum(-2)  # [b, h, n, f]
    s_in = s_0[:, :, None] + kv.cumsum(2) - kv
    z_in = z_0[:, :, None] + k_sum.cumsum(2) - k_sum
    numerator = qc @ s_in + scores @ vc  # [b, h, n, i, d]
    denominator = (qc @ z_in[..., None])[..., 0] + scores.sum(-1) + eps  # [b, h, n, i]
    outputs = (numerator / denominator[..., None]).permute(0, 2, 3, 1, 4).reshape(batch, chunks * length, heads, dim)
    return outputs[:, :steps], (s_0 + kv.sum(2), z_0 + k_sum.sum(2))
