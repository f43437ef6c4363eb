"""Reference backend: the plain step-by-step recurrence, exp or sigmoid input gate (`docs/architectures/xlstm.md`,
sections 'Recurrence (exponential input gate)' and 'Sigmoid input gate (mLSTMsig)')."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def step(q, k, v, igate, fgate, state, input_gate, normalize, eps):
    """One step. q, k `[B, NH, DK]`, v `[B, NH, DV]`, igate, fgate `[B, NH]`, state `(C, n, m)`.

    Everything in one dtype. Returns `(h [B, NH, DV], (C, n, m))`.
    """
    c, n, m = state
    log_f = F.logsigmoid(fgate)
    if input_gate == "exp":
        m_new = torch.maximum(log_f + m, igate)
        f = torch.exp(log_f + m - m_new)
        i = torch.exp(igate - m_new)
    else:
        m_new = m
        f = torch.exp(log_f)
        i = torch.sigmoid(igate)
    c = f[..., None, None] * c + i[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = f[..., None] * n + i[..., None] * k
    q_scaled = q * q.shape[-1] ** -0.5
    numerator = torch.einsum("bhk,bhkv->bhv", q_scaled, c)
    if input_gate == "sigmoid" and not normalize:
        return numerator, (c, n, m_new)
    qn = (q_scaled * n).sum(-1).abs()
    denominator = torch.maximum(qn, torch.exp(-m_new)) if input_gate == "exp" else qn.clamp_min(1.0)
    h = numerator / (denominator + eps)[..., None]
    return h, (c, n, m_new)


def mlstm(q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size, resets=None):
    """See `hf_seqplugins.kernels.mlstm` for the contract (inputs arrive validated, mask folded in);
    `resets` `[B, T]`: the state is zeroed (m = 0) before those steps."""
    dtype = igate.dtype
    batch, heads, steps, dk = q.shape
    dv = v.shape[-1]
    zeros = (
        q.new_zeros(batch, heads, dk, dv, dtype=dtype),
        q.new_zeros(batch, heads, dk, dtype=dtype),
        q.new_zeros(batch, heads, dtype=dtype),
    )
    state = zeros if initial_state is None else initial_state
    starts = [None] * steps if resets is None else resets.unbind(1)
    outputs = []
    for q_t, k_t, v_t, i_t, f_t, start in zip(
        q.to(dtype).unbind(2), k.to(dtype).unbind(2), v.to(dtype).unbind(2), igate.unbind(2), fgate.unbind(2), starts
    ):
        if start is not None:
            state = tuple(torch.where(start.view(-1, *([1] * (s.dim() - 1))), zero, s) for s, zero in zip(state, zeros))
        h, state = step(q_t, k_t, v_t, i_t, f_t, state, input_gate, normalize, eps)
        outputs.append(h)
    return torch.stack(outputs, dim=2), state
