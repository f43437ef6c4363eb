"""Fast pure-PyTorch backends: the chunkwise form ("torch") and its single-chunk case, the
quadratic parallel form ("parallel"), both with initial and final state (`docs/architectures/xlstm.md`, sections
'Chunkwise form' and 'Parallel (quadratic) form').

All log-decays are sums of non-positive terms taken directly (prefix sums, suffix sums, and the
tril-masked cumsum for the decay matrix inside a chunk), never differences of two
cumulative sums, so long chunks lose no precision. The sequence is padded at the end up to a whole
number of chunks with identity steps (igate = -inf, fgate = +inf, q = k = v = 0), which leave the
state exactly unchanged, so the final state stays exact for any T.

With the exp input gate, the max state entering chunk c and the combined max inside the chunk equal
the step loop's m exactly (both are the unrolled max of the step recurrence), hence outputs and final states
match the reference at eps > 0 too. With the sigmoid gate every log-weight is <= 0: no stabiliser is
used (m = 0 throughout; the state's m is returned unchanged) and the normalizer's floor is 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _decay_matrix(log_f: torch.Tensor, log_i: torch.Tensor) -> torch.Tensor:
    """`[..., L]` log forget / input gates -> `[..., L, L]` log weights of key l for query j:
    sum_{l < r <= j} log_f[r] + log_i[l] for l <= j, -inf above the diagonal."""
    length = log_f.shape[-1]
    steps = log_f[..., :, None].expand(*log_f.shape, length).tril(-1)
    causal = torch.ones(length, length, dtype=torch.bool, device=log_f.device).tril()
    return torch.where(causal, steps.cumsum(-2) + log_i[..., None, :], -math.inf)


def _chunkwise(q, k, v, igate, fgate, initial_state, input_gate, normalize, eps, chunk_size):
    dtype = igate.dtype
    batch, heads, steps, dk = q.shape
    dv = v.shape[-1]
    length = min(chunk_size, steps)
    pad = -steps % length
    q, k, v = (F.pad(t.to(dtype), (0, 0, 0, pad)) for t in (q, k, v))
    igate = F.pad(igate, (0, pad), value=-math.inf)
    fgate = F.pad(fgate, (0, pad), value=math.inf)
    chunks = (steps + pad) // length
    q = q.view(batch, heads, chunks, length, dk) * dk**-0.5
    k = k.view(batch, heads, chunks, length, dk)
    v = v.view(batch, heads, chunks, length, dv)
    log_f = F.logsigmoid(fgate).view(batch, heads, chunks, length)
    log_i = (igate if input_gate == "exp" else F.logsigmoid(igate)).view(batch, heads, chunks, length)

    if initial_state is None:
        initial_state = (q.new_zeros(batch, heads, dk, dv), q.new_zeros(batch, heads, dk), q.new_zeros(batch, heads))
    c, n, m = initial_state

    to_start = log_f.cumsum(-1)  # decay from the chunk start through step j
    total = to_start[..., -1]
    to_end = F.pad(log_f.flip(-1).cumsum(-1).flip(-1)[..., 1:], (0, 1))  # decay from after step j to the chunk end
    key_weight = to_end + log_i

    if input_gate == "exp":
        best_key = key_weight.amax(-1)
        m_states = [m]
        # unbind, not indexing in the loop: each indexing op's backward adds a full-size zero tensor
        for total_c, best_c in zip(total.unbind(-1), best_key.unbind(-1)):
            m_states.append(torch.maximum(total_c + m_states[-1], best_c))
        m_all = torch.stack(m_states, dim=-1)
        m_in, m_out = m_all[..., :-1], m_all[..., 1:]
        carry = torch.exp(total + m_in - m_out)
        key_scale = torch.exp(key_weight - m_out[..., None])
    else:
        carry = torch.exp(total)
        key_scale = torch.exp(key_weight)
    k_scaled = k * key_scale[..., None]
    kv = k_scaled.transpose(-1, -2) @ v
    k_sum = k_scaled.sum(-2)
    c_states, n_states = [], []
    for carry_c, kv_c, k_sum_c in zip(carry.unbind(-1), kv.unbind(2), k_sum.unbind(2)):
        c_states.append(c)
        n_states.append(n)
        c = carry_c[..., None, None] * c + kv_c
        n = carry_c[..., None] * n + k_sum_c
    if input_gate == "exp":
        m = m_all[..., -1]
    c_in = torch.stack(c_states, dim=2)
    n_in = torch.stack(n_states, dim=2)

    log_d = _decay_matrix(log_f, log_i)
    if input_gate == "exp":
        m_inter = to_start + m_in[..., None]
        m_comb = torch.maximum(m_inter, log_d.amax(-1))
        q_inter = q * torch.exp(m_inter - m_comb)[..., None]
        scores = (q @ k.transpose(-1, -2)) * torch.exp(log_d - m_comb[..., None])
    else:
        q_inter = q * torch.exp(to_start)[..., None]
        scores = (q @ k.transpose(-1, -2)) * torch.exp(log_d)
    numerator = q_inter @ c_in + scores @ v
    if input_gate == "sigmoid" and not normalize:
        h = numerator
    else:
        denominator = ((q_inter * n_in[..., None, :]).sum(-1) + scores.sum(-1)).abs()
        floor = torch.maximum(denominator, torch.exp(-m_comb)) if input_gate == "exp" else denominator.clamp_min(1.0)
        h = numerator / (floor + eps)[..., None]
    h = h.reshape(batch, heads, chunks * length, dv)[:, :, :steps]
    return h, (c, n, m)


def mlstm(q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size):
    """Chunkwise form; see `hf_seqplugins.kernels.mlstm` for the contract (inputs arrive validated)."""
    return _chunkwise(q, k, v, igate, fgate, initial_state, input_gate, normalize, eps, chunk_size)


def mlstm_parallel(q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size):
    """Quadratic parallel form (one chunk of length T; `chunk_size` is ignored), with states."""
    return _chunkwise(q, k, v, igate, fgate, initial_state, input_gate, normalize, eps, q.shape[2])
