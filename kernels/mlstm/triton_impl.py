"""Triton backend of the mLSTM operator in the style of TFLA (Tiled Flash Linear Attention;
`docs/architectures/xlstm.md`, section 'Triton backend (TFLA)').

Two levels of tiling. The sequence is cut into chunks of `L` steps (the inter-chunk size, from
`chunk_size`); a recurrent kernel materialises the state `(C, n, m)` entering every chunk. Each chunk
is cut again into blocks of `BT` steps (the intra-chunk tile): the output kernel runs one program per
(query block, DV tile, batch x head), starts from the inter-chunk term `q C_c` and then walks the key
blocks of the lower triangle with a FlashAttention-style running max.

Layout inside the kernels: `q, k [BH, T, DK]`, `v [BH, T, DV]` (BH = B * NH, T padded to a whole
number of chunks), per-step scalars `[BH, T]`, per-chunk scalars `[BH, NC]` and chunk-boundary states
`C [BH, NC + 1, DK, DV]`, `n [BH, NC + 1, DK]`, `m [BH, NC + 1]` (slot c is the state entering chunk c).

Forward (exp gate; the sigmoid gate is the same with m = 0 everywhere and log i = logsigmoid(igate)):

- gate prepass (torch): `lf = logsigmoid(fgate)`, in-chunk `b_j = sum_{r<=j} lf_r`, `g = b_L`,
  `a_j = sum_{r>j} lf_r + log i_j` (suffix sum, no cancellation) and its chunk max;
- `_fw_recurrent_kernel`, grid (DK tiles, DV tiles, BH), loop over chunks:
  `m' = max(g + m, max_j a_j)`, `C' = e^{g + m - m'} C + sum_j e^{a_j - m'} k_j v_j^T` (n likewise);
- `_fw_parallel_kernel`, grid (NC x query blocks, DV tiles, BH): running max starts at the inter
  term's `b_j + m_c` (finite, so padding and the masked triangle never give `-inf - -inf`), ends at
  the step loop's m_t exactly; `h = num / (max(|den|, e^{-m}) + eps)`. It also writes m_t and den_t.

Backward (derivation in `_backward`): the per-step output gradient becomes
`dnum = dh / denom` and a scalar `dden`; `_bw_recurrent_kernel` runs the chunks in reverse for the
gradient of the state entering each chunk (slot 0 is the initial state's); `_bw_dq_kernel`,
`_bw_dk_kernel` and `_bw_dv_kernel` are the three parallel kernels. Gate gradients follow in a torch
post-pass that is exact with initial state, final-state gradients and the stabiliser's own gradient.

`tl.dot` needs every dimension >= 16: head dims are tiled by powers of two in [16, 64] ([16, 32] in
float64, whose 64-wide tiles would need more shared memory than an A100 has) with masked loads (padded columns read as 0
and are never stored), time tiles are powers of two >= 16 and T is padded at the end with identity steps (igate = -inf,
fgate = +inf, q = k = v = 0), which leave the state exactly unchanged. Dots run with ``input_precision="ieee"``: TF32
would lose three digits. Half-precision inputs are upcast to float32 before the kernels; float64 inputs are computed in
float64. In float32 the in-chunk decays `b_j - b_l` are differences of prefix sums, as in TFLA: a weight loses
about `|b_l| * 6e-8` of relative accuracy (the torch backend sums the decays directly instead).
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn.functional as F

try:  # in a `try` so exported remote code does not list Triton as a hard requirement
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("the 'triton' backend needs Triton: pip install 'hf-seqplugins[triton]'") from error

from hf_seqplugins import BackendUnavailableError, triton_device_reason

__all__ = ["mlstm", "unsupported_reason"]

# triton.jit picks the interpreter when the kernels are defined, i.e. when this module is first imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MIN_DOT_SIZE = 16
MAX_HEAD_TILE = 64
MAX_INTRA_TILE = 64
# float64 tiles of 64 stage about 165 KB of shared memory per program, at the limit of an A100 (sm_80).
MAX_TILE_FLOAT64 = 32
MAX_GRID_Z = 65535


@triton.jit
def _dot(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _load_rows(ptr, bh, rows, cols, steps, width):
    """`[len(rows), len(cols)]` tile of a contiguous `[BH, T, width]` tensor; columns >= width read as 0."""
    return tl.load(ptr + (bh * steps + rows[:, None]) * width + cols[None, :], mask=(cols < width)[None, :], other=0.0)


@triton.jit
def _load_state(ptr, slot, offs_k, offs_v, dk, dv):
    """Tile of `C[slot]` (slot = bh * (NC + 1) + c) of a `[BH, NC + 1, DK, DV]` tensor; out-of-range reads 0."""
    valid = (offs_k < dk)[:, None] & (offs_v < dv)[None, :]
    return tl.load(ptr + slot * dk * dv + offs_k[:, None] * dv + offs_v[None, :], mask=valid, other=0.0)


@triton.jit
def _store_state(ptr, value, slot, offs_k, offs_v, dk, dv):
    valid = (offs_k < dk)[:, None] & (offs_v < dv)[None, :]
    tl.store(ptr + slot * dk * dv + offs_k[:, None] * dv + offs_v[None, :], value, mask=valid)


@triton.jit
def _log_decay(b_query, b_key, log_i_key, rows_query, rows_key):
    """`[BTq, BTk]` log weights `b_j - b_l + log i_l` of key l for query j, -inf where l > j.

    Forward and backward evaluate exactly this expression, so `exp(log_decay - m_j) <= 1` holds bitwise.
    """
    log_d = b_query[:, None] - b_key[None, :] + log_i_key[None, :]
    return tl.where(rows_query[:, None] >= rows_key[None, :], log_d, -float("inf"))


@triton.jit
def _fw_recurrent_kernel(
    k_ptr,
    v_ptr,
    a_ptr,
    g_ptr,
    a_max_ptr,
    c0_ptr,
    n0_ptr,
    m0_ptr,
    c_ptr,
    n_ptr,
    m_ptr,
    steps,
    chunks,
    dk,
    dv,
    SIGMOID: tl.constexpr,
    L: tl.constexpr,
    BT: tl.constexpr,
    BDK: tl.constexpr,
    BDV: tl.constexpr,
):
    """States entering every chunk. k `[BH, T, DK]`, v `[BH, T, DV]`, a `[BH, T]`, g and a_max `[BH, NC]`,
    initial c0 `[BH, DK, DV]`, n0 `[BH, DK]`, m0 `[BH]`; writes c `[BH, NC+1, DK, DV]`, n `[BH, NC+1, DK]`
    and (exp gate) m `[BH, NC+1]`."""
    pid_k = tl.program_id(0)
    pid_v = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    offs_k = pid_k * BDK + tl.arange(0, BDK)
    offs_v = pid_v * BDV + tl.arange(0, BDV)
    offs_t = tl.arange(0, BT)
    # Only the first DV tile writes n (and m): every tile computes them.
    n_valid = offs_k < tl.where(pid_v == 0, dk, 0)

    c = _load_state(c0_ptr, bh, offs_k, offs_v, dk, dv)
    n = tl.load(n0_ptr + bh * dk + offs_k, mask=offs_k < dk, other=0.0)
    if not SIGMOID:
        m = tl.load(m0_ptr + bh)
    for chunk in range(chunks):
        slot = bh * (chunks + 1) + chunk
        _store_state(c_ptr, c, slot, offs_k, offs_v, dk, dv)
        tl.store(n_ptr + slot * dk + offs_k, n, mask=n_valid)
        g = tl.load(g_ptr + bh * chunks + chunk)
        if SIGMOID:
            decay = tl.exp(g)
        else:
            if pid_k + pid_v == 0:
                tl.store(m_ptr + slot, m)
            m_next = tl.maximum(g + m, tl.load(a_max_ptr + bh * chunks + chunk))
            decay = tl.exp(g + m - m_next)
        c = decay * c
        n = decay * n
        for start in range(0, L, BT):
            rows = chunk * L + start + offs_t
            a = tl.load(a_ptr + bh * steps + rows)
            if SIGMOID:
                weight = tl.exp(a)
            else:
                weight = tl.exp(a - m_next)
            k_weighted = _load_rows(k_ptr, bh, rows, offs_k, steps, dk) * weight[:, None]
            c += _dot(tl.trans(k_weighted), _load_rows(v_ptr, bh, rows, offs_v, steps, dv))
            n += tl.sum(k_weighted, 0)
        if not SIGMOID:
            m = m_next
    slot = bh * (chunks + 1) + chunks
    _store_state(c_ptr, c, slot, offs_k, offs_v, dk, dv)
    tl.store(n_ptr + slot * dk + offs_k, n, mask=n_valid)
    if not SIGMOID:
        if pid_k + pid_v == 0:
            tl.store(m_ptr + slot, m)


@triton.jit
def _fw_parallel_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    b_ptr,
    log_i_ptr,
    c_ptr,
    n_ptr,
    m_ptr,
    h_ptr,
    m_step_ptr,
    den_ptr,
    steps,
    chunks,
    dk,
    dv,
    scale,
    eps,
    SIGMOID: tl.constexpr,
    NORMALIZE: tl.constexpr,
    L: tl.constexpr,
    BT: tl.constexpr,
    BDK: tl.constexpr,
    BDV: tl.constexpr,
):
    """Outputs h `[BH, T, DV]` of one query block and DV tile, plus (DV tile 0) the per-step max state
    m `[BH, T]` (exp gate) and signed normalizer den `[BH, T]`, both in the stabilised units of m."""
    blocks = L // BT
    chunk = tl.program_id(0) // blocks
    query_block = tl.program_id(0) % blocks
    pid_v = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    rows_q = chunk * L + query_block * BT + tl.arange(0, BT)
    offs_v = pid_v * BDV + tl.arange(0, BDV)
    slot = bh * (chunks + 1) + chunk
    b_q = tl.load(b_ptr + bh * steps + rows_q)

    num = tl.zeros([BT, BDV], dtype=c_ptr.dtype.element_ty)
    den = tl.zeros([BT], dtype=c_ptr.dtype.element_ty)
    for k0 in range(0, dk, BDK):
        offs_k = k0 + tl.arange(0, BDK)
        q = _load_rows(q_ptr, bh, rows_q, offs_k, steps, dk) * scale
        num += _dot(q, _load_state(c_ptr, slot, offs_k, offs_v, dk, dv))
        den += tl.sum(q * tl.load(n_ptr + slot * dk + offs_k, mask=offs_k < dk, other=0.0)[None, :], 1)
    if SIGMOID:
        inter = tl.exp(b_q)
        num = num * inter[:, None]
        den = den * inter
    else:
        m_run = b_q + tl.load(m_ptr + slot)

    for key_block in range(0, query_block + 1):
        rows_k = chunk * L + key_block * BT + tl.arange(0, BT)
        scores = tl.zeros([BT, BT], dtype=c_ptr.dtype.element_ty)
        for k0 in range(0, dk, BDK):
            offs_k = k0 + tl.arange(0, BDK)
            q = _load_rows(q_ptr, bh, rows_q, offs_k, steps, dk) * scale
            scores += _dot(q, tl.trans(_load_rows(k_ptr, bh, rows_k, offs_k, steps, dk)))
        log_d = _log_decay(
            b_q, tl.load(b_ptr + bh * steps + rows_k), tl.load(log_i_ptr + bh * steps + rows_k), rows_q, rows_k
        )
        values = _load_rows(v_ptr, bh, rows_k, offs_v, steps, dv)
        if SIGMOID:
            scores = scores * tl.exp(log_d)
            num += _dot(scores, values)
            den += tl.sum(scores, 1)
        else:
            m_new = tl.maximum(m_run, tl.max(log_d, 1))
            rescale = tl.exp(m_run - m_new)
            scores = scores * tl.exp(log_d - m_new[:, None])
            num = num * rescale[:, None] + _dot(scores, values)
            den = den * rescale + tl.sum(scores, 1)
            m_run = m_new

    if NORMALIZE:
        if SIGMOID:
            floor = 1.0
        else:
            floor = tl.exp(-m_run)
        h = num / (tl.maximum(tl.abs(den), floor) + eps)[:, None]
    else:
        h = num
    tl.store(h_ptr + (bh * steps + rows_q[:, None]) * dv + offs_v[None, :], h, mask=(offs_v < dv)[None, :])
    if pid_v == 0:
        tl.store(den_ptr + bh * steps + rows_q, den)
        if not SIGMOID:
            tl.store(m_step_ptr + bh * steps + rows_q, m_run)


@triton.jit
def _bw_recurrent_kernel(
    q_ptr,
    b_ptr,
    g_ptr,
    m_ptr,
    m_step_ptr,
    dnum_ptr,
    dden_ptr,
    dc_last_ptr,
    dn_last_ptr,
    dc_ptr,
    dn_ptr,
    steps,
    chunks,
    dk,
    dv,
    scale,
    SIGMOID: tl.constexpr,
    L: tl.constexpr,
    BT: tl.constexpr,
    BDK: tl.constexpr,
    BDV: tl.constexpr,
):
    """Gradients of the states entering every chunk, from the last (the final state's, dc_last `[BH, DK, DV]`,
    dn_last `[BH, DK]`) back to slot 0 (the initial state's): writes dc `[BH, NC+1, DK, DV]`, dn `[BH, NC+1, DK]`.
    Inputs: q `[BH, T, DK]`, b, m_step, dden `[BH, T]`, dnum `[BH, T, DV]`, g `[BH, NC]`, m `[BH, NC+1]`."""
    pid_k = tl.program_id(0)
    pid_v = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    offs_k = pid_k * BDK + tl.arange(0, BDK)
    offs_v = pid_v * BDV + tl.arange(0, BDV)
    offs_t = tl.arange(0, BT)
    n_valid = offs_k < tl.where(pid_v == 0, dk, 0)

    dc = _load_state(dc_last_ptr, bh, offs_k, offs_v, dk, dv)
    dn = tl.load(dn_last_ptr + bh * dk + offs_k, mask=offs_k < dk, other=0.0)
    for step in range(chunks):
        chunk = chunks - 1 - step
        slot = bh * (chunks + 1) + chunk
        _store_state(dc_ptr, dc, slot + 1, offs_k, offs_v, dk, dv)
        tl.store(dn_ptr + (slot + 1) * dk + offs_k, dn, mask=n_valid)
        g = tl.load(g_ptr + bh * chunks + chunk)
        if SIGMOID:
            decay = tl.exp(g)
        else:
            m_in = tl.load(m_ptr + slot)
            decay = tl.exp(g + m_in - tl.load(m_ptr + slot + 1))
        dc = decay * dc
        dn = decay * dn
        for start in range(0, L, BT):
            rows = chunk * L + start + offs_t
            b = tl.load(b_ptr + bh * steps + rows)
            if SIGMOID:
                q_factor = tl.exp(b) * scale
            else:
                q_factor = tl.exp(b + m_in - tl.load(m_step_ptr + bh * steps + rows)) * scale
            q = _load_rows(q_ptr, bh, rows, offs_k, steps, dk) * q_factor[:, None]
            dc += _dot(tl.trans(q), _load_rows(dnum_ptr, bh, rows, offs_v, steps, dv))
            dn += tl.sum(q * tl.load(dden_ptr + bh * steps + rows)[:, None], 0)
    _store_state(dc_ptr, dc, bh * (chunks + 1), offs_k, offs_v, dk, dv)
    tl.store(dn_ptr + bh * (chunks + 1) * dk + offs_k, dn, mask=n_valid)


@triton.jit
def _bw_dq_kernel(
    k_ptr,
    v_ptr,
    b_ptr,
    log_i_ptr,
    c_ptr,
    n_ptr,
    m_ptr,
    m_step_ptr,
    dnum_ptr,
    dden_ptr,
    dq_ptr,
    steps,
    chunks,
    dk,
    dv,
    scale,
    SIGMOID: tl.constexpr,
    L: tl.constexpr,
    BT: tl.constexpr,
    BDK: tl.constexpr,
    BDV: tl.constexpr,
):
    """dq `[BH, T, DK]` (gradient of the unscaled q) of one query block and DK tile:
    `dq_j / scale = w_j (C_c dnum_j + n_c dden_j) + sum_{l<=j} D_jl (dnum_j . v_l + dden_j) k_l`."""
    blocks = L // BT
    chunk = tl.program_id(0) // blocks
    query_block = tl.program_id(0) % blocks
    pid_k = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    rows_q = chunk * L + query_block * BT + tl.arange(0, BT)
    offs_k = pid_k * BDK + tl.arange(0, BDK)
    slot = bh * (chunks + 1) + chunk
    b_q = tl.load(b_ptr + bh * steps + rows_q)
    dden = tl.load(dden_ptr + bh * steps + rows_q)
    if SIGMOID:
        q_factor = tl.exp(b_q)
    else:
        m_q = tl.load(m_step_ptr + bh * steps + rows_q)
        q_factor = tl.exp(b_q + tl.load(m_ptr + slot) - m_q)

    dq = tl.zeros([BT, BDK], dtype=c_ptr.dtype.element_ty)
    for v0 in range(0, dv, BDV):
        offs_v = v0 + tl.arange(0, BDV)
        dnum = _load_rows(dnum_ptr, bh, rows_q, offs_v, steps, dv)
        dq += _dot(dnum, tl.trans(_load_state(c_ptr, slot, offs_k, offs_v, dk, dv)))
    dq += dden[:, None] * tl.load(n_ptr + slot * dk + offs_k, mask=offs_k < dk, other=0.0)[None, :]
    dq = dq * q_factor[:, None]

    for key_block in range(0, query_block + 1):
        rows_k = chunk * L + key_block * BT + tl.arange(0, BT)
        grad_scores = tl.zeros([BT, BT], dtype=c_ptr.dtype.element_ty) + dden[:, None]
        for v0 in range(0, dv, BDV):
            offs_v = v0 + tl.arange(0, BDV)
            dnum = _load_rows(dnum_ptr, bh, rows_q, offs_v, steps, dv)
            grad_scores += _dot(dnum, tl.trans(_load_rows(v_ptr, bh, rows_k, offs_v, steps, dv)))
        log_d = _log_decay(
            b_q, tl.load(b_ptr + bh * steps + rows_k), tl.load(log_i_ptr + bh * steps + rows_k), rows_q, rows_k
        )
        if SIGMOID:
            grad_scores = grad_scores * tl.exp(log_d)
        else:
            grad_scores = grad_scores * tl.exp(log_d - m_q[:, None])
        dq += _dot(grad_scores, _load_rows(k_ptr, bh, rows_k, offs_k, steps, dk))
    tl.store(dq_ptr + (bh * steps + rows_q[:, None]) * dk + offs_k[None, :], dq * scale, mask=(offs_k < dk)[None, :])


@triton.jit
def _bw_dk_kernel(
    q_ptr,
    v_ptr,
    b_ptr,
    log_i_ptr,
    a_ptr,
    m_ptr,
    m_step_ptr,
    dnum_ptr,
    dden_ptr,
    dc_ptr,
    dn_ptr,
    dk_ptr,
    steps,
    chunks,
    dk,
    dv,
    scale,
    SIGMOID: tl.constexpr,
    L: tl.constexpr,
    BT: tl.constexpr,
    BDK: tl.constexpr,
    BDV: tl.constexpr,
):
    """dk `[BH, T, DK]` of one key block and DK tile: `sum_{j>=l} D_jl (dnum_j . v_l + dden_j) q^_j`
    plus `e^{a_l - m_{c+1}} (dC_{c+1} v_l + dn_{c+1})` from the state leaving the chunk."""
    blocks = L // BT
    chunk = tl.program_id(0) // blocks
    key_block = tl.program_id(0) % blocks
    pid_k = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    rows_k = chunk * L + key_block * BT + tl.arange(0, BT)
    offs_k = pid_k * BDK + tl.arange(0, BDK)
    slot_out = bh * (chunks + 1) + chunk + 1
    b_k = tl.load(b_ptr + bh * steps + rows_k)
    log_i_k = tl.load(log_i_ptr + bh * steps + rows_k)

    dk_acc = tl.zeros([BT, BDK], dtype=dc_ptr.dtype.element_ty)
    for query_block in range(key_block, blocks):
        rows_q = chunk * L + query_block * BT + tl.arange(0, BT)
        b_q = tl.load(b_ptr + bh * steps + rows_q)
        grad_scores_t = (
            tl.zeros([BT, BT], dtype=dc_ptr.dtype.element_ty) + tl.load(dden_ptr + bh * steps + rows_q)[None, :]
        )
        for v0 in range(0, dv, BDV):
            offs_v = v0 + tl.arange(0, BDV)
            values = _load_rows(v_ptr, bh, rows_k, offs_v, steps, dv)
            grad_scores_t += _dot(values, tl.trans(_load_rows(dnum_ptr, bh, rows_q, offs_v, steps, dv)))
        log_d_t = tl.trans(_log_decay(b_q, b_k, log_i_k, rows_q, rows_k))
        if SIGMOID:
            grad_scores_t = grad_scores_t * tl.exp(log_d_t)
        else:
            grad_scores_t = grad_scores_t * tl.exp(log_d_t - tl.load(m_step_ptr + bh * steps + rows_q)[None, :])
        dk_acc += _dot(grad_scores_t, _load_rows(q_ptr, bh, rows_q, offs_k, steps, dk) * scale)

    a = tl.load(a_ptr + bh * steps + rows_k)
    if SIGMOID:
        k_factor = tl.exp(a)
    else:
        k_factor = tl.exp(a - tl.load(m_ptr + slot_out))
    inter = tl.zeros([BT, BDK], dtype=dc_ptr.dtype.element_ty)
    for v0 in range(0, dv, BDV):
        offs_v = v0 + tl.arange(0, BDV)
        inter += _dot(
            _load_rows(v_ptr, bh, rows_k, offs_v, steps, dv),
            tl.trans(_load_state(dc_ptr, slot_out, offs_k, offs_v, dk, dv)),
        )
    inter += tl.load(dn_ptr + slot_out * dk + offs_k, mask=offs_k < dk, other=0.0)[None, :]
    dk_acc += k_factor[:, None] * inter
    tl.store(dk_ptr + (bh * steps + rows_k[:, None]) * dk + offs_k[None, :], dk_acc, mask=(offs_k < dk)[None, :])


@triton.jit
def _bw_dv_kernel(
    q_ptr,
    k_ptr,
    b_ptr,
    log_i_ptr,
    a_ptr,
    m_ptr,
    m_step_ptr,
    dnum_ptr,
    dc_ptr,
    dv_ptr,
    steps,
    chunks,
    dk,
    dv,
    scale,
    SIGMOID: tl.constexpr,
    L: tl.constexpr,
    BT: tl.constexpr,
    BDK: tl.constexpr,
    BDV: tl.constexpr,
):
    """dv `[BH, T, DV]` of one key block and DV tile: `sum_{j>=l} D_jl (q^_j . k_l) dnum_j`
    plus `e^{a_l - m_{c+1}} dC_{c+1}^T k_l`."""
    blocks = L // BT
    chunk = tl.program_id(0) // blocks
    key_block = tl.program_id(0) % blocks
    pid_v = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    rows_k = chunk * L + key_block * BT + tl.arange(0, BT)
    offs_v = pid_v * BDV + tl.arange(0, BDV)
    slot_out = bh * (chunks + 1) + chunk + 1
    b_k = tl.load(b_ptr + bh * steps + rows_k)
    log_i_k = tl.load(log_i_ptr + bh * steps + rows_k)

    dv_acc = tl.zeros([BT, BDV], dtype=dc_ptr.dtype.element_ty)
    for query_block in range(key_block, blocks):
        rows_q = chunk * L + query_block * BT + tl.arange(0, BT)
        b_q = tl.load(b_ptr + bh * steps + rows_q)
        scores_t = tl.zeros([BT, BT], dtype=dc_ptr.dtype.element_ty)
        for k0 in range(0, dk, BDK):
            offs_k = k0 + tl.arange(0, BDK)
            keys = _load_rows(k_ptr, bh, rows_k, offs_k, steps, dk)
            scores_t += _dot(keys, tl.trans(_load_rows(q_ptr, bh, rows_q, offs_k, steps, dk) * scale))
        log_d_t = tl.trans(_log_decay(b_q, b_k, log_i_k, rows_q, rows_k))
        if SIGMOID:
            scores_t = scores_t * tl.exp(log_d_t)
        else:
            scores_t = scores_t * tl.exp(log_d_t - tl.load(m_step_ptr + bh * steps + rows_q)[None, :])
        dv_acc += _dot(scores_t, _load_rows(dnum_ptr, bh, rows_q, offs_v, steps, dv))

    a = tl.load(a_ptr + bh * steps + rows_k)
    if SIGMOID:
        k_factor = tl.exp(a)
    else:
        k_factor = tl.exp(a - tl.load(m_ptr + slot_out))
    inter = tl.zeros([BT, BDV], dtype=dc_ptr.dtype.element_ty)
    for k0 in range(0, dk, BDK):
        offs_k = k0 + tl.arange(0, BDK)
        inter += _dot(
            _load_rows(k_ptr, bh, rows_k, offs_k, steps, dk), _load_state(dc_ptr, slot_out, offs_k, offs_v, dk, dv)
        )
    dv_acc += k_factor[:, None] * inter
    tl.store(dv_ptr + (bh * steps + rows_k[:, None]) * dv + offs_v[None, :], dv_acc, mask=(offs_v < dv)[None, :])


def unsupported_reason(
    q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size
) -> str | None:
    """None when the Triton kernels compute these (validated) inputs, else why not.

    The check for a -inf forget gate reads a flag back from the device (one synchronisation).
    """
    reason = triton_device_reason(q.device, INTERPRETED, __name__)
    if reason is not None:
        return reason
    if input_gate not in ("exp", "sigmoid"):
        return f"unknown input_gate {input_gate!r}"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"the kernels compute in float32 (float64 for float64 inputs), got {q.dtype}"
    if q.shape[0] * q.shape[1] > MAX_GRID_Z:
        return f"B * NH = {q.shape[0] * q.shape[1]} exceeds the launch grid's limit of {MAX_GRID_Z} programs"
    if bool(torch.isneginf(fgate).any()):
        # In-chunk decays are differences of prefix sums of logsigmoid(fgate): -inf - -inf would be NaN.
        return (
            "fgate contains -inf (a forget gate of exactly 0), which the prefix-sum decays of the kernels "
            "cannot represent"
        )
    return None


def mlstm(q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size, *, block_intra=None):
    """See `hf_seqplugins.kernels.mlstm` for the contract; q, k `[B, NH, T, DK]`, v `[B, NH, T, DV]`,
    igate, fgate `[B, NH, T]`, initial_state None or `(C [B, NH, DK, DV], n [B, NH, DK], m [B, NH])`,
    mask None or `[B, T]` bool (folded into the gates here if given).

    Returns `h [B, NH, T, DV]` and `(C, n, m)` in the compute dtype (float64 for float64 q, else float32).
    `chunk_size` is rounded up to a power of two >= 16 (and down to the padded length for short inputs);
    `block_intra`, the intra-chunk tile (a power of two >= 16 dividing the chunk), defaults to
    min(chunk, 64) (32 in float64). Raises `BackendUnavailableError` for what `unsupported_reason` refuses.
    """
    reason = unsupported_reason(q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size)
    if reason is not None:
        raise BackendUnavailableError(f"backend 'triton' for 'mlstm' cannot run these inputs: {reason}")
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    batch, heads, steps, dk = q.shape
    dv = v.shape[-1]
    q, k, v, igate, fgate = (t.to(dtype) for t in (q, k, v, igate, fgate))
    if mask is not None:
        keep = mask.to(device=q.device, dtype=torch.bool)[:, None, :]
        igate = torch.where(keep, igate, -math.inf)
        fgate = torch.where(keep, fgate, math.inf)
        q = torch.where(keep[..., None], q, 0)
    if initial_state is None:
        initial_state = (q.new_zeros(batch, heads, dk, dv), q.new_zeros(batch, heads, dk), q.new_zeros(batch, heads))
    initial_state = tuple(s.to(dtype) for s in initial_state)
    config = _Config.make(steps, dk, dv, chunk_size, block_intra, input_gate == "sigmoid", normalize, float(eps), dtype)
    inputs = (q, k, v, igate, fgate, *initial_state)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        h, *state = _MLSTMFunction.apply(config, *inputs)
        return h, tuple(state)
    h, state, _ = _forward(config, *inputs)
    return h, state


class _Config:
    """Static launch parameters: chunk `L`, intra tile `BT`, head-dim tiles `BDK`, `BDV` and the options."""

    def __init__(self, chunk, block, block_dk, block_dv, sigmoid, normalize, eps):
        self.chunk, self.block, self.block_dk, self.block_dv = chunk, block, block_dk, block_dv
        self.sigmoid, self.normalize, self.eps = sigmoid, normalize, eps

    @classmethod
    def make(cls, steps, dk, dv, chunk_size, block_intra, sigmoid, normalize, eps, dtype):
        max_tile = MAX_TILE_FLOAT64 if dtype == torch.float64 else MAX_HEAD_TILE
        chunk = min(
            max(MIN_DOT_SIZE, triton.next_power_of_2(chunk_size)), max(MIN_DOT_SIZE, triton.next_power_of_2(steps))
        )
        block = min(chunk, max_tile, MAX_INTRA_TILE) if block_intra is None else block_intra
        if block < MIN_DOT_SIZE or block & (block - 1) or chunk % block:
            raise ValueError(
                f"block_intra must be a power of two >= {MIN_DOT_SIZE} dividing the chunk ({chunk}), got {block}"
            )

        def head_tile(width):
            return min(max_tile, max(MIN_DOT_SIZE, triton.next_power_of_2(width)))

        # The exp gate always normalises; `normalize` only switches the sigmoid gate's normaliser.
        return cls(chunk, block, head_tile(dk), head_tile(dv), sigmoid, normalize or not sigmoid, eps)

    def constants(self):
        return {
            "SIGMOID": self.sigmoid,
            "L": self.chunk,
            "BT": self.block,
            "BDK": self.block_dk,
            "BDV": self.block_dv,
            "num_warps": 4,
        }


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _forward(config, q, k, v, igate, fgate, c0, n0, m0):
    """Runs the gate prepass and the two forward kernels on `[B, NH, T, .]` inputs of the compute dtype.

    Returns h `[B, NH, T, DV]`, the final state and, for the backward, a dict of the padded `[BH, T', .]`
    operands, gate terms, chunk states and per-step m and den.
    """
    batch, heads, steps, dk = q.shape
    dv = v.shape[-1]
    bh, chunk = batch * heads, config.chunk
    padded = triton.cdiv(steps, chunk) * chunk
    chunks, pad = padded // chunk, padded - steps
    q, k = (F.pad(t, (0, 0, 0, pad)).reshape(bh, padded, dk).contiguous() for t in (q, k))
    v = F.pad(v, (0, 0, 0, pad)).reshape(bh, padded, dv).contiguous()
    igate = F.pad(igate, (0, pad), value=-math.inf).reshape(bh, chunks, chunk)
    fgate = F.pad(fgate, (0, pad), value=math.inf).reshape(bh, chunks, chunk)
    log_f = F.logsigmoid(fgate)
    log_i = F.logsigmoid(igate) if config.sigmoid else igate
    b = log_f.cumsum(-1)
    g = b[..., -1].contiguous()
    a = F.pad(log_f.flip(-1).cumsum(-1).flip(-1)[..., 1:], (0, 1)) + log_i
    a_max = a.amax(-1).contiguous()
    b, a, log_i = (t.reshape(bh, padded).contiguous() for t in (b, a, log_i))
    c0, n0, m0 = c0.reshape(bh, dk, dv).contiguous(), n0.reshape(bh, dk).contiguous(), m0.reshape(bh).contiguous()

    c_states = q.new_empty(bh, chunks + 1, dk, dv)
    n_states = q.new_empty(bh, chunks + 1, dk)
    m_states = q.new_empty(bh, chunks + 1)
    h = q.new_empty(bh, padded, dv)
    m_step = q.new_empty(bh, padded)
    den = q.new_empty(bh, padded)
    scale = dk**-0.5
    constants = config.constants()
    head_tiles = (triton.cdiv(dk, config.block_dk), triton.cdiv(dv, config.block_dv))
    with _device_guard(q.device):
        _fw_recurrent_kernel[(*head_tiles, bh)](
            k, v, a, g, a_max, c0, n0, m0, c_states, n_states, m_states, padded, chunks, dk, dv, **constants
        )
        _fw_parallel_kernel[(chunks * (chunk // config.block), head_tiles[1], bh)](
            q,
            k,
            v,
            b,
            log_i,
            c_states,
            n_states,
            m_states,
            h,
            m_step,
            den,
            padded,
            chunks,
            dk,
            dv,
            scale,
            config.eps,
            NORMALIZE=config.normalize,
            **constants,
        )

    m_final = m0.clone() if config.sigmoid else m_states[:, -1].clone()
    final_state = (
        c_states[:, -1].reshape(batch, heads, dk, dv).clone(),
        n_states[:, -1].reshape(batch, heads, dk).clone(),
        m_final.reshape(batch, heads),
    )
    saved = {
        "q": q,
        "k": k,
        "v": v,
        "igate": igate.reshape(bh, padded),
        "fgate": fgate.reshape(bh, padded),
        "b": b,
        "a": a,
        "g": g,
        "log_i": log_i,
        "c_states": c_states,
        "n_states": n_states,
        "m_states": m_states,
        "h": h,
        "m_step": m_step,
        "den": den,
    }
    return h[:, :steps].reshape(batch, heads, steps, dv), final_state, saved


def _reverse_cumsum(x):
    return x.flip(-1).cumsum(-1).flip(-1)


def _backward(config, saved, c0, n0, d_h, d_c_last, d_n_last, d_m_last):
    """Gradients of (q, k, v, igate, fgate, C0, n0, m0) given those of h `[B, NH, T, DV]` and of the final state.

    With `D` the weights of the forward (m_t held fixed), the output gradient of step t becomes
    `dnum_t = dh_t / denom_t` and `dden_t = -sign(den_t) (dh_t . h_t) / denom_t` (0 where the floor
    `e^{-m_t}` wins); the kernels turn these into dq, dk, dv and the state gradients. Gate gradients:
    every log-gate enters only through log-weights `w_ts` (step t reading key s, or the initial state),
    so with `dW_ts` their gradients, row sums are `q_t . dq_t`, column sums `k_s . dk_s` (final state
    included as one more row), which gives `d log i_s = k_s . dk_s` and
    `d log f_r = sum_{t>=r} (q_t . dq_t - k_t . dk_t) + <dC_T, C_T> + <dn_T, n_T>`.
    The max state m_t adds a path of its own: the output depends on it through eps only,
    `dh_t/dm_t = -eps h_t / denom_t`, and the returned m_T with its state's scale, `dm_T - <dC_T, C_T> - <dn_T, n_T>`.
    m_t is the max of `log f_t + m_{t-1}` and `igate_t`: a reverse scan hands its gradient to igate where the
    input gate attains the max (m_t == igate_t) and otherwise to log f_t and on to m_{t-1}; vectorised,
    step t collects the gradients of m over [t, next reset).
    """
    q, k, v, h, m_step, den = (saved[name] for name in ("q", "k", "v", "h", "m_step", "den"))
    bh, padded, dk = q.shape
    dv = v.shape[-1]
    batch, heads, steps, _ = d_h.shape
    chunks = padded // config.chunk
    d_h = F.pad(d_h.to(q.dtype), (0, 0, 0, padded - steps)).reshape(bh, padded, dv)
    if config.normalize:
        floor = torch.ones_like(den) if config.sigmoid else torch.exp(-m_step)
        denom = torch.maximum(den.abs(), floor) + config.eps
        dh_h = (d_h * h).sum(-1)
        d_num = (d_h / denom[..., None]).contiguous()
        d_den = torch.where(den.abs() > floor, -torch.sign(den) * dh_h / denom, 0.0).contiguous()
    else:
        d_num = d_h.contiguous()
        d_den = torch.zeros_like(den)
    d_c_last = d_c_last.to(q.dtype).reshape(bh, dk, dv).contiguous()
    d_n_last = d_n_last.to(q.dtype).reshape(bh, dk).contiguous()

    b, a, g, log_i = saved["b"], saved["a"], saved["g"], saved["log_i"]
    c_states, n_states, m_states = saved["c_states"], saved["n_states"], saved["m_states"]
    d_c_states = torch.empty_like(c_states)
    d_n_states = torch.empty_like(n_states)
    dq, dk_, dv_ = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    scale = dk**-0.5
    constants = config.constants()
    blocks = chunks * (config.chunk // config.block)
    tiles_k, tiles_v = triton.cdiv(dk, config.block_dk), triton.cdiv(dv, config.block_dv)
    with _device_guard(q.device):
        _bw_recurrent_kernel[(tiles_k, tiles_v, bh)](
            q,
            b,
            g,
            m_states,
            m_step,
            d_num,
            d_den,
            d_c_last,
            d_n_last,
            d_c_states,
            d_n_states,
            padded,
            chunks,
            dk,
            dv,
            scale,
            **constants,
        )
        _bw_dq_kernel[(blocks, tiles_k, bh)](
            k,
            v,
            b,
            log_i,
            c_states,
            n_states,
            m_states,
            m_step,
            d_num,
            d_den,
            dq,
            padded,
            chunks,
            dk,
            dv,
            scale,
            **constants,
        )
        _bw_dk_kernel[(blocks, tiles_k, bh)](
            q,
            v,
            b,
            log_i,
            a,
            m_states,
            m_step,
            d_num,
            d_den,
            d_c_states,
            d_n_states,
            dk_,
            padded,
            chunks,
            dk,
            dv,
            scale,
            **constants,
        )
        _bw_dv_kernel[(blocks, tiles_v, bh)](
            q, k, b, log_i, a, m_states, m_step, d_num, d_c_states, dv_, padded, chunks, dk, dv, scale, **constants
        )

    q_dq = (q * dq).sum(-1)
    k_dk = (k * dk_).sum(-1)
    final_row = (d_c_last * c_states[:, -1]).sum((-2, -1)) + (d_n_last * n_states[:, -1]).sum(-1)
    d_log_f = _reverse_cumsum(q_dq - k_dk) + final_row[:, None]
    d_log_i = k_dk
    d_c0, d_n0 = d_c_states[:, 0], d_n_states[:, 0]
    if config.sigmoid:
        d_m0 = d_m_last.to(q.dtype).reshape(bh)
    else:
        d_m = -config.eps * dh_h / denom
        d_m[:, -1] += d_m_last.to(q.dtype).reshape(bh) - final_row
        reset = m_step == log_i
        positions = torch.arange(padded, device=q.device)
        reset_at = torch.where(reset, positions, padded)
        next_reset = F.pad(reset_at.flip(-1).cummin(-1).values.flip(-1)[:, 1:], (0, 1), value=padded)
        suffix = F.pad(_reverse_cumsum(d_m), (0, 1))
        d_m_carry = suffix[:, :padded] - suffix.gather(1, next_reset)
        d_log_f = d_log_f + torch.where(reset, 0.0, d_m_carry)
        d_log_i = d_log_i + torch.where(reset, d_m_carry, 0.0)
        c0, n0 = c0.reshape(bh, dk, dv), n0.reshape(bh, dk)
        d_m0 = (d_c0 * c0).sum((-2, -1)) + (d_n0 * n0).sum(-1) + torch.where(reset[:, 0], 0.0, d_m_carry[:, 0])
    d_fgate = d_log_f * torch.sigmoid(-saved["fgate"])
    d_igate = d_log_i * torch.sigmoid(-saved["igate"]) if config.sigmoid else d_log_i

    def unpad(t, width):
        return t[:, :steps].reshape(batch, heads, steps, width)

    return (
        unpad(dq, dk),
        unpad(dk_, dk),
        unpad(dv_, dv),
        d_igate[:, :steps].reshape(batch, heads, steps),
        d_fgate[:, :steps].reshape(batch, heads, steps),
        d_c0.reshape(batch, heads, dk, dv),
        d_n0.reshape(batch, heads, dk),
        d_m0.reshape(batch, heads),
    )


class _MLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, config, q, k, v, igate, fgate, c0, n0, m0):
        h, final_state, saved = _forward(config, q, k, v, igate, fgate, c0, n0, m0)
        ctx.config = config
        ctx.names = list(saved)
        ctx.save_for_backward(c0, n0, *saved.values())
        return (h, *final_state)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_h, d_c, d_n, d_m):
        c0, n0, *tensors = ctx.saved_tensors
        saved = dict(zip(ctx.names, tensors))
        return (None, *_backward(ctx.config, saved, c0, n0, d_h, d_c, d_n, d_m))
