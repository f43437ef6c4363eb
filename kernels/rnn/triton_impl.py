"""Triton backend of the head-wise RNN operator: FlashRNN-style persistent fused kernels.

Forward: one program per (head, batch tile of `BLOCK_B` rows). It loads its head's recurrent blocks
(all G gates, DH x DH each) once, then loops over time inside the kernel: load the `gates_x` tile,
`tl.dot` the previous h with each gate's block, apply the cell's pointwise math, store h (and, when
training, the other states and the recurrent parts the backward needs).

Backward: a second kernel with the same grid runs the reverse-time loop with the untransposed
blocks (the adjoint of ``R h`` is ``delta @ R``), reading the previous states and each step's
recurrent part ``R h + b`` that the forward stored (recomputing the latter would keep R in both
layouts and double the shared memory). It writes the gradient of `gates_x` per step, accumulates
each program's partial dR and db in registers, and writes the gradient of the initial state at the
end; the partials are summed over batch tiles in torch (deterministic, unlike atomics).

`tl.dot` needs every dimension >= 16, so DH and the batch tile are padded to powers of two >= 16
with masked loads; padded rows and columns stay exactly zero through both loops. Dots run with
``input_precision="ieee"``: TF32 would cost about three decimal digits of the float32 result.
Gate math and states use the dtype of the (validated) inputs: float32, or float64 when given float64.
"""

from __future__ import annotations

import contextlib
import os

import torch

try:  # in a `try` so exported remote code does not list Triton as a hard requirement
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("the 'triton' backend needs Triton: pip install 'hf-seqplugins[triton]'") from error

from hf_seqplugins import BackendUnavailableError, triton_device_reason

from .cells import NUM_STATES

__all__ = ["MAX_HEAD_DIM", "headwise_rnn", "unsupported_reason"]

# triton.jit picks the interpreter when the kernels are defined, i.e. when this module is first imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MAX_HEAD_DIM = 64
BLOCK_B = 16
MIN_DOT_SIZE = 16


@triton.jit
def _tanh(x):
    # triton.language has no tanh; this form neither overflows nor loses accuracy for large |x|.
    e = tl.exp(-2.0 * tl.abs(x))
    magnitude = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -magnitude, magnitude)


@triton.jit
def _sigmoid(x):
    # Unlike tl.sigmoid, never evaluates exp of a large positive number (inf, harmless but noisy when interpreted).
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _log_sigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _offsets(offs_b, offs_d, t, steps, slot, slots, head, heads, head_dim):
    """Offsets of the `[BLOCK_B, BLOCK_D]` tile at (time t, slot, head) of a contiguous `[B, steps, slots, NH, DH]`
    tensor."""
    return (((offs_b[:, None] * steps + t) * slots + slot) * heads + head) * head_dim + offs_d[None, :]


@triton.jit
def _load_weight_block(weight_ptr, gate, head, heads, head_dim, offs_d, TRANSPOSED: tl.constexpr):
    """Block `R[gate, head]` of the `[G, NH, DH, DH]` weight as a `[BLOCK_D, BLOCK_D]` tile, optionally transposed."""
    base = weight_ptr + (gate * heads + head) * head_dim * head_dim
    valid = (offs_d[:, None] < head_dim) & (offs_d[None, :] < head_dim)
    if TRANSPOSED:
        offsets = offs_d[None, :] * head_dim + offs_d[:, None]
    else:
        offsets = offs_d[:, None] * head_dim + offs_d[None, :]
    return tl.load(base + offsets, mask=valid, other=0.0)


@triton.jit
def _recurrent_part(h, weight_transposed, bias_ptr, gate, head, heads, head_dim, offs_d, HAS_BIAS: tl.constexpr):
    """`R[gate, head] h (+ b)` for a `[BLOCK_B, BLOCK_D]` tile of h, given the transposed block."""
    recurrent = tl.dot(h, weight_transposed, input_precision="ieee")
    if HAS_BIAS:
        bias = tl.load(bias_ptr + (gate * heads + head) * head_dim + offs_d, mask=offs_d < head_dim, other=0.0)
        recurrent += bias[None, :]
    return recurrent


@triton.jit
def _load_step(ptr, offs_b, offs_d, t, steps, slot, slots, head, heads, head_dim, valid):
    return tl.load(ptr + _offsets(offs_b, offs_d, t, steps, slot, slots, head, heads, head_dim), mask=valid, other=0.0)


@triton.jit
def _store_step(ptr, value, offs_b, offs_d, t, steps, slot, slots, head, heads, head_dim, valid):
    tl.store(ptr + _offsets(offs_b, offs_d, t, steps, slot, slots, head, heads, head_dim), value, mask=valid)


@triton.jit
def _load_keep(mask_ptr, offs_b, t, steps, batch):
    """`[BLOCK_B, 1]` booleans: True where step t of a row is a real token (padding rows read as False)."""
    return (tl.load(mask_ptr + offs_b * steps + t, mask=offs_b < batch, other=0) != 0)[:, None]


@triton.jit
def _load_previous(
    history_ptr,
    slot,
    slots,
    initial_ptr,
    initial_slot,
    num_states,
    offs_b,
    offs_d,
    t,
    steps,
    head,
    heads,
    head_dim,
    valid,
):
    """A state before step t: entry t-1 of its `[B, T, slots, NH, DH]` history, or the initial state at t = 0."""
    from_history = _load_step(
        history_ptr, offs_b, offs_d, tl.maximum(t - 1, 0), steps, slot, slots, head, heads, head_dim, valid
    )
    from_initial = _load_step(initial_ptr, offs_b, offs_d, 0, 1, initial_slot, num_states, head, heads, head_dim, valid)
    return tl.where(t > 0, from_history, from_initial)


@triton.jit
def _lstm_forward(i_pre, f_pre, g_pre, o_pre, c):
    c_new = _sigmoid(f_pre) * c + _sigmoid(i_pre) * _tanh(g_pre)
    return _sigmoid(o_pre) * _tanh(c_new), c_new


@triton.jit
def _lstm_backward(i_pre, f_pre, g_pre, o_pre, c, dh, dc):
    """Gradients of the four pre-activations and of the previous c, given those of the new (h, c)."""
    i = _sigmoid(i_pre)
    f = _sigmoid(f_pre)
    g = _tanh(g_pre)
    o = _sigmoid(o_pre)
    tanh_c = _tanh(f * c + i * g)
    dc_total = dc + dh * o * (1.0 - tanh_c * tanh_c)
    return (
        dc_total * g * i * (1.0 - i),
        dc_total * c * f * (1.0 - f),
        dc_total * i * (1.0 - g * g),
        dh * tanh_c * o * (1.0 - o),
        dc_total * f,
    )


@triton.jit
def _gru_forward(x_r, x_z, x_n, rec_r, rec_z, rec_n, h):
    r = _sigmoid(x_r + rec_r)
    z = _sigmoid(x_z + rec_z)
    candidate = _tanh(x_n + r * rec_n)
    return (1.0 - z) * candidate + z * h


@triton.jit
def _gru_backward(x_r, x_z, x_n, rec_r, rec_z, rec_n, h, dh):
    """Gradients of (rec_r, rec_z, rec_n), of x_n, and the direct part of the previous h's gradient.

    The gradients of x_r and x_z equal those of rec_r and rec_z; x_n's differs by the reset factor.
    """
    r = _sigmoid(x_r + rec_r)
    z = _sigmoid(x_z + rec_z)
    candidate = _tanh(x_n + r * rec_n)
    d_candidate_pre = dh * (1.0 - z) * (1.0 - candidate * candidate)
    d_r_pre = d_candidate_pre * rec_n * r * (1.0 - r)
    d_z_pre = dh * (h - candidate) * z * (1.0 - z)
    return d_r_pre, d_z_pre, d_candidate_pre * r, d_candidate_pre, dh * z


@triton.jit
def _slstm_forward(i_pre, f_pre, z_pre, o_pre, c, n, m, NORMALIZER_CLAMP: tl.constexpr):
    first_step = n == 0.0
    log_f_plus_m = m + _log_sigmoid(f_pre)
    m_new = tl.where(first_step, i_pre, tl.maximum(i_pre, log_f_plus_m))
    i_gate = tl.exp(i_pre - m_new)
    # The exponent is <= 0 except at a first step, where m is arbitrary and the value unused: cap it there.
    f_gate = tl.where(first_step, 0.0, tl.exp(tl.minimum(log_f_plus_m - m_new, 0.0)))
    c_new = f_gate * c + i_gate * _tanh(z_pre)
    n_new = f_gate * n + i_gate
    if NORMALIZER_CLAMP:
        n_new = tl.maximum(n_new, 1.0)
    return _sigmoid(o_pre) * c_new / n_new, c_new, n_new, m_new


@triton.jit
def _slstm_backward(i_pre, f_pre, z_pre, o_pre, c, n, m, dh, dc, dn, dm, NORMALIZER_CLAMP: tl.constexpr):
    """Gradients of the four pre-activations and of the previous (c, n, m), given those of the new (h, c, n, m)."""
    first_step = n == 0.0
    log_f_plus_m = m + _log_sigmoid(f_pre)
    m_new = tl.where(first_step, i_pre, tl.maximum(i_pre, log_f_plus_m))
    i_gate = tl.exp(i_pre - m_new)
    f_gate = tl.where(first_step, 0.0, tl.exp(tl.minimum(log_f_plus_m - m_new, 0.0)))
    z = _tanh(z_pre)
    o = _sigmoid(o_pre)
    c_new = f_gate * c + i_gate * z
    n_unclamped = f_gate * n + i_gate
    if NORMALIZER_CLAMP:
        n_new = tl.maximum(n_unclamped, 1.0)
    else:
        n_new = n_unclamped
    dc_total = dc + dh * o / n_new
    dn_total = dn - dh * o * c_new / (n_new * n_new)
    if NORMALIZER_CLAMP:
        dn_total = tl.where(n_unclamped >= 1.0, dn_total, 0.0)
    d_i_exponent = (dc_total * z + dn_total) * i_gate
    d_f_exponent = (dc_total * c + dn_total * n) * f_gate
    dm_total = dm - d_i_exponent - d_f_exponent
    # Share of m_new's gradient that goes to i_pre; torch.maximum splits a tie evenly, and so do we.
    share_i = tl.where(first_step | (i_pre > log_f_plus_m), 1.0, tl.where(i_pre == log_f_plus_m, 0.5, 0.0))
    d_log_f_plus_m = d_f_exponent + dm_total * (1.0 - share_i)
    return (
        d_i_exponent + dm_total * share_i,
        d_log_f_plus_m * _sigmoid(-f_pre),
        dc_total * i_gate * (1.0 - z * z),
        dh * c_new / n_new * o * (1.0 - o),
        dc_total * f_gate,
        dn_total * f_gate,
        d_log_f_plus_m,
    )


@triton.jit
def _forward_kernel(
    gates_x_ptr,
    weight_ptr,
    bias_ptr,
    initial_ptr,
    mask_ptr,
    outputs_ptr,
    final_ptr,
    state_history_ptr,
    recurrent_history_ptr,
    batch,
    steps,
    heads,
    head_dim,
    CELL: tl.constexpr,
    NUM_GATES: tl.constexpr,
    NUM_STATES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    NORMALIZER_CLAMP: tl.constexpr,
    STORE_HISTORY: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Pointers: gates_x `[B, T, G, NH, DH]`, weight `[G, NH, DH, DH]`, bias `[G, NH, DH]`, initial and final
    `[B, S, NH, DH]`, mask `[B, T]` int8, outputs `[B, T, NH, DH]`; with STORE_HISTORY, for the backward, the
    states other than h after each step `[B, T, S-1, NH, DH]` and each step's `R h + b` `[B, T, G, NH, DH]`."""
    head = tl.program_id(0)
    offs_b = (tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    valid = (offs_b[:, None] < batch) & (offs_d[None, :] < head_dim)

    # Gate counts are 1, 3 or 4.
    w0 = _load_weight_block(weight_ptr, 0, head, heads, head_dim, offs_d, True)
    if NUM_GATES > 1:
        w1 = _load_weight_block(weight_ptr, 1, head, heads, head_dim, offs_d, True)
        w2 = _load_weight_block(weight_ptr, 2, head, heads, head_dim, offs_d, True)
    if NUM_GATES > 3:
        w3 = _load_weight_block(weight_ptr, 3, head, heads, head_dim, offs_d, True)

    h = _load_step(initial_ptr, offs_b, offs_d, 0, 1, 0, NUM_STATES, head, heads, head_dim, valid)
    if NUM_STATES > 1:
        c = _load_step(initial_ptr, offs_b, offs_d, 0, 1, 1, NUM_STATES, head, heads, head_dim, valid)
    if NUM_STATES > 2:
        n = _load_step(initial_ptr, offs_b, offs_d, 0, 1, 2, NUM_STATES, head, heads, head_dim, valid)
        m = _load_step(initial_ptr, offs_b, offs_d, 0, 1, 3, NUM_STATES, head, heads, head_dim, valid)

    for t in range(steps):
        x0 = _load_step(gates_x_ptr, offs_b, offs_d, t, steps, 0, NUM_GATES, head, heads, head_dim, valid)
        rec0 = _recurrent_part(h, w0, bias_ptr, 0, head, heads, head_dim, offs_d, HAS_BIAS)
        if NUM_GATES > 1:
            x1 = _load_step(gates_x_ptr, offs_b, offs_d, t, steps, 1, NUM_GATES, head, heads, head_dim, valid)
            x2 = _load_step(gates_x_ptr, offs_b, offs_d, t, steps, 2, NUM_GATES, head, heads, head_dim, valid)
            rec1 = _recurrent_part(h, w1, bias_ptr, 1, head, heads, head_dim, offs_d, HAS_BIAS)
            rec2 = _recurrent_part(h, w2, bias_ptr, 2, head, heads, head_dim, offs_d, HAS_BIAS)
        if NUM_GATES > 3:
            x3 = _load_step(gates_x_ptr, offs_b, offs_d, t, steps, 3, NUM_GATES, head, heads, head_dim, valid)
            rec3 = _recurrent_part(h, w3, bias_ptr, 3, head, heads, head_dim, offs_d, HAS_BIAS)

        if CELL == "elman_tanh":
            h_new = _tanh(x0 + rec0)
        elif CELL == "elman_relu":
            h_new = tl.maximum(x0 + rec0, 0.0)
        elif CELL == "gru":
            h_new = _gru_forward(x0, x1, x2, rec0, rec1, rec2, h)
        elif CELL == "lstm":
            h_new, c_new = _lstm_forward(x0 + rec0, x1 + rec1, x2 + rec2, x3 + rec3, c)
        else:
            h_new, c_new, n_new, m_new = _slstm_forward(
                x0 + rec0, x1 + rec1, x2 + rec2, x3 + rec3, c, n, m, NORMALIZER_CLAMP
            )

        if HAS_MASK:
            keep = _load_keep(mask_ptr, offs_b, t, steps, batch)
            h_new = tl.where(keep, h_new, h)
            if NUM_STATES > 1:
                c_new = tl.where(keep, c_new, c)
            if NUM_STATES > 2:
                n_new = tl.where(keep, n_new, n)
                m_new = tl.where(keep, m_new, m)
        h = h_new
        if NUM_STATES > 1:
            c = c_new
        if NUM_STATES > 2:
            n = n_new
            m = m_new

        _store_step(outputs_ptr, h, offs_b, offs_d, t, steps, 0, 1, head, heads, head_dim, valid)
        if STORE_HISTORY:
            _store_step(
                recurrent_history_ptr, rec0, offs_b, offs_d, t, steps, 0, NUM_GATES, head, heads, head_dim, valid
            )
            if NUM_GATES > 1:
                _store_step(
                    recurrent_history_ptr, rec1, offs_b, offs_d, t, steps, 1, NUM_GATES, head, heads, head_dim, valid
                )
                _store_step(
                    recurrent_history_ptr, rec2, offs_b, offs_d, t, steps, 2, NUM_GATES, head, heads, head_dim, valid
                )
            if NUM_GATES > 3:
                _store_step(
                    recurrent_history_ptr, rec3, offs_b, offs_d, t, steps, 3, NUM_GATES, head, heads, head_dim, valid
                )
            if NUM_STATES > 1:
                _store_step(
                    state_history_ptr, c, offs_b, offs_d, t, steps, 0, NUM_STATES - 1, head, heads, head_dim, valid
                )
            if NUM_STATES > 2:
                _store_step(
                    state_history_ptr, n, offs_b, offs_d, t, steps, 1, NUM_STATES - 1, head, heads, head_dim, valid
                )
                _store_step(
                    state_history_ptr, m, offs_b, offs_d, t, steps, 2, NUM_STATES - 1, head, heads, head_dim, valid
                )

    _store_step(final_ptr, h, offs_b, offs_d, 0, 1, 0, NUM_STATES, head, heads, head_dim, valid)
    if NUM_STATES > 1:
        _store_step(final_ptr, c, offs_b, offs_d, 0, 1, 1, NUM_STATES, head, heads, head_dim, valid)
    if NUM_STATES > 2:
        _store_step(final_ptr, n, offs_b, offs_d, 0, 1, 2, NUM_STATES, head, heads, head_dim, valid)
        _store_step(final_ptr, m, offs_b, offs_d, 0, 1, 3, NUM_STATES, head, heads, head_dim, valid)


@triton.jit
def _accumulate_gate(grad_weight, grad_bias, d_recurrent, h_previous):
    """Adds one step's `d_recurrent^T @ h_previous` and `sum_b d_recurrent` to a gate's dR block and db."""
    grad_weight += tl.dot(tl.trans(d_recurrent), h_previous, input_precision="ieee")
    grad_bias += tl.sum(d_recurrent, axis=0)
    return grad_weight, grad_bias


@triton.jit
def _store_gate_grads(
    grad_weight_ptr, grad_bias_ptr, grad_weight, grad_bias, tile, gate, num_gates, head, heads, head_dim, offs_d
):
    """Stores a program's partial dR block and db of one gate into `[tiles, G, NH, DH, DH]` and `[tiles, G, NH, DH]`."""
    block = (tile.to(tl.int64) * num_gates + gate) * heads + head
    inside = offs_d < head_dim
    tl.store(
        grad_weight_ptr + block * head_dim * head_dim + offs_d[:, None] * head_dim + offs_d[None, :],
        grad_weight,
        mask=inside[:, None] & inside[None, :],
    )
    tl.store(grad_bias_ptr + block * head_dim + offs_d, grad_bias, mask=inside)


@triton.jit
def _backward_kernel(
    gates_x_ptr,
    weight_ptr,
    initial_ptr,
    mask_ptr,
    outputs_ptr,
    state_history_ptr,
    recurrent_history_ptr,
    grad_outputs_ptr,
    grad_final_ptr,
    grad_gates_x_ptr,
    grad_weight_ptr,
    grad_bias_ptr,
    grad_initial_ptr,
    batch,
    steps,
    heads,
    head_dim,
    CELL: tl.constexpr,
    NUM_GATES: tl.constexpr,
    NUM_STATES: tl.constexpr,
    HAS_MASK: tl.constexpr,
    NORMALIZER_CLAMP: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Reverse-time loop. Inputs as in `_forward_kernel`; grad_outputs `[B, T, NH, DH]`, grad_final and
    grad_initial `[B, S, NH, DH]`, grad_gates_x `[B, T, G, NH, DH]`, partial grad_weight `[tiles, G, NH, DH, DH]`
    and grad_bias `[tiles, G, NH, DH]`."""
    head = tl.program_id(0)
    tile = tl.program_id(1)
    offs_b = (tile * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    valid = (offs_b[:, None] < batch) & (offs_d[None, :] < head_dim)
    dtype = gates_x_ptr.dtype.element_ty

    # Gate counts are 1, 3 or 4.
    w0 = _load_weight_block(weight_ptr, 0, head, heads, head_dim, offs_d, False)
    dw0 = tl.zeros([BLOCK_D, BLOCK_D], dtype)
    db0 = tl.zeros([BLOCK_D], dtype)
    if NUM_GATES > 1:
        w1 = _load_weight_block(weight_ptr, 1, head, heads, head_dim, offs_d, False)
        w2 = _load_weight_block(weight_ptr, 2, head, heads, head_dim, offs_d, False)
        dw1 = tl.zeros([BLOCK_D, BLOCK_D], dtype)
        dw2 = tl.zeros([BLOCK_D, BLOCK_D], dtype)
        db1 = tl.zeros([BLOCK_D], dtype)
        db2 = tl.zeros([BLOCK_D], dtype)
    if NUM_GATES > 3:
        w3 = _load_weight_block(weight_ptr, 3, head, heads, head_dim, offs_d, False)
        dw3 = tl.zeros([BLOCK_D, BLOCK_D], dtype)
        db3 = tl.zeros([BLOCK_D], dtype)

    dh = _load_step(grad_final_ptr, offs_b, offs_d, 0, 1, 0, NUM_STATES, head, heads, head_dim, valid)
    if NUM_STATES > 1:
        dc = _load_step(grad_final_ptr, offs_b, offs_d, 0, 1, 1, NUM_STATES, head, heads, head_dim, valid)
    if NUM_STATES > 2:
        dn = _load_step(grad_final_ptr, offs_b, offs_d, 0, 1, 2, NUM_STATES, head, heads, head_dim, valid)
        dm = _load_step(grad_final_ptr, offs_b, offs_d, 0, 1, 3, NUM_STATES, head, heads, head_dim, valid)

    for step in range(steps):
        t = steps - 1 - step
        dh += _load_step(grad_outputs_ptr, offs_b, offs_d, t, steps, 0, 1, head, heads, head_dim, valid)
        h = _load_previous(
            outputs_ptr, 0, 1, initial_ptr, 0, NUM_STATES, offs_b, offs_d, t, steps, head, heads, head_dim, valid
        )
        if NUM_STATES > 1:
            c = _load_previous(
                state_history_ptr,
                0,
                NUM_STATES - 1,
                initial_ptr,
                1,
                NUM_STATES,
                offs_b,
                offs_d,
                t,
                steps,
                head,
                heads,
                head_dim,
                valid,
            )
        if NUM_STATES > 2:
            n = _load_previous(
                state_history_ptr,
                1,
                NUM_STATES - 1,
                initial_ptr,
                2,
                NUM_STATES,
                offs_b,
                offs_d,
                t,
                steps,
                head,
                heads,
                head_dim,
                valid,
            )
            m = _load_previous(
                state_history_ptr,
                2,
                NUM_STATES - 1,
                initial_ptr,
                3,
                NUM_STATES,
                offs_b,
                offs_d,
                t,
                steps,
                head,
                heads,
                head_dim,
                valid,
            )
        if HAS_MASK:
            # A padding step is the identity: its state gradient bypasses the cell, which gets a zero gradient
            # (and so gives zero gate gradients). Selecting after the cell instead trips an assertion in LLVM's
            # SLP vectorizer when Triton 3.9 compiles the LSTM backward for sm_80/sm_90.
            keep = _load_keep(mask_ptr, offs_b, t, steps, batch)
            dh_bypass = tl.where(keep, 0.0, dh)
            dh = tl.where(keep, dh, 0.0)
            if NUM_STATES > 1:
                dc_bypass = tl.where(keep, 0.0, dc)
                dc = tl.where(keep, dc, 0.0)
            if NUM_STATES > 2:
                dn_bypass = tl.where(keep, 0.0, dn)
                dn = tl.where(keep, dn, 0.0)
                dm_bypass = tl.where(keep, 0.0, dm)
                dm = tl.where(keep, dm, 0.0)

        x0 = _load_step(gates_x_ptr, offs_b, offs_d, t, steps, 0, NUM_GATES, head, heads, head_dim, valid)
        rec0 = _load_step(recurrent_history_ptr, offs_b, offs_d, t, steps, 0, NUM_GATES, head, heads, head_dim, valid)
        if NUM_GATES > 1:
            x1 = _load_step(gates_x_ptr, offs_b, offs_d, t, steps, 1, NUM_GATES, head, heads, head_dim, valid)
            x2 = _load_step(gates_x_ptr, offs_b, offs_d, t, steps, 2, NUM_GATES, head, heads, head_dim, valid)
            rec1 = _load_step(
                recurrent_history_ptr, offs_b, offs_d, t, steps, 1, NUM_GATES, head, heads, head_dim, valid
            )
            rec2 = _load_step(
                recurrent_history_ptr, offs_b, offs_d, t, steps, 2, NUM_GATES, head, heads, head_dim, valid
            )
        if NUM_GATES > 3:
            x3 = _load_step(gates_x_ptr, offs_b, offs_d, t, steps, 3, NUM_GATES, head, heads, head_dim, valid)
            rec3 = _load_step(
                recurrent_history_ptr, offs_b, offs_d, t, steps, 3, NUM_GATES, head, heads, head_dim, valid
            )

        # d0..d3: gradients of the recurrent parts; they equal those of gates_x except GRU's candidate (dx2).
        if CELL == "elman_tanh":
            h_new = _tanh(x0 + rec0)
            d0 = dh * (1.0 - h_new * h_new)
        elif CELL == "elman_relu":
            d0 = tl.where(x0 + rec0 > 0.0, dh, 0.0)
        elif CELL == "gru":
            d0, d1, d2, dx2, dh_direct = _gru_backward(x0, x1, x2, rec0, rec1, rec2, h, dh)
        elif CELL == "lstm":
            d0, d1, d2, d3, dc_previous = _lstm_backward(x0 + rec0, x1 + rec1, x2 + rec2, x3 + rec3, c, dh, dc)
        else:
            d0, d1, d2, d3, dc_previous, dn_previous, dm_previous = _slstm_backward(
                x0 + rec0, x1 + rec1, x2 + rec2, x3 + rec3, c, n, m, dh, dc, dn, dm, NORMALIZER_CLAMP
            )

        _store_step(grad_gates_x_ptr, d0, offs_b, offs_d, t, steps, 0, NUM_GATES, head, heads, head_dim, valid)
        dw0, db0 = _accumulate_gate(dw0, db0, d0, h)
        dh_previous = tl.dot(d0, w0, input_precision="ieee")
        if NUM_GATES > 1:
            if CELL != "gru":
                dx2 = d2
            _store_step(grad_gates_x_ptr, d1, offs_b, offs_d, t, steps, 1, NUM_GATES, head, heads, head_dim, valid)
            _store_step(grad_gates_x_ptr, dx2, offs_b, offs_d, t, steps, 2, NUM_GATES, head, heads, head_dim, valid)
            dw1, db1 = _accumulate_gate(dw1, db1, d1, h)
            dw2, db2 = _accumulate_gate(dw2, db2, d2, h)
            dh_previous += tl.dot(d1, w1, input_precision="ieee") + tl.dot(d2, w2, input_precision="ieee")
        if NUM_GATES > 3:
            _store_step(grad_gates_x_ptr, d3, offs_b, offs_d, t, steps, 3, NUM_GATES, head, heads, head_dim, valid)
            dw3, db3 = _accumulate_gate(dw3, db3, d3, h)
            dh_previous += tl.dot(d3, w3, input_precision="ieee")
        if CELL == "gru":
            dh_previous += dh_direct

        dh = dh_previous
        if NUM_STATES > 1:
            dc = dc_previous
        if NUM_STATES > 2:
            dn = dn_previous
            dm = dm_previous
        if HAS_MASK:
            dh += dh_bypass
            if NUM_STATES > 1:
                dc += dc_bypass
            if NUM_STATES > 2:
                dn += dn_bypass
                dm += dm_bypass

    _store_step(grad_initial_ptr, dh, offs_b, offs_d, 0, 1, 0, NUM_STATES, head, heads, head_dim, valid)
    if NUM_STATES > 1:
        _store_step(grad_initial_ptr, dc, offs_b, offs_d, 0, 1, 1, NUM_STATES, head, heads, head_dim, valid)
    if NUM_STATES > 2:
        _store_step(grad_initial_ptr, dn, offs_b, offs_d, 0, 1, 2, NUM_STATES, head, heads, head_dim, valid)
        _store_step(grad_initial_ptr, dm, offs_b, offs_d, 0, 1, 3, NUM_STATES, head, heads, head_dim, valid)

    _store_gate_grads(grad_weight_ptr, grad_bias_ptr, dw0, db0, tile, 0, NUM_GATES, head, heads, head_dim, offs_d)
    if NUM_GATES > 1:
        _store_gate_grads(grad_weight_ptr, grad_bias_ptr, dw1, db1, tile, 1, NUM_GATES, head, heads, head_dim, offs_d)
        _store_gate_grads(grad_weight_ptr, grad_bias_ptr, dw2, db2, tile, 2, NUM_GATES, head, heads, head_dim, offs_d)
    if NUM_GATES > 3:
        _store_gate_grads(grad_weight_ptr, grad_bias_ptr, dw3, db3, tile, 3, NUM_GATES, head, heads, head_dim, offs_d)


def unsupported_reason(
    cell: str,
    gates_x: torch.Tensor,
    recurrent_weight: torch.Tensor,
    recurrent_bias: torch.Tensor | None,
    initial_state: tuple[torch.Tensor, ...],
    mask: torch.Tensor | None,
    projection: torch.Tensor | None,
    normalizer_clamp: bool,
) -> str | None:
    """None when the Triton kernels can compute these (validated) inputs, else why not."""
    reason = triton_device_reason(gates_x.device, INTERPRETED, __name__)
    if reason is not None:
        return reason
    if projection is not None:
        return (
            f"the LSTM projection (proj_size={projection.shape[1]}) is not supported by the Triton kernel; "
            "use backend 'torch'"
        )
    head_dim = gates_x.shape[-1]
    if head_dim > MAX_HEAD_DIM:
        return (
            f"head size {head_dim} exceeds {MAX_HEAD_DIM}, the largest whose recurrent blocks fit on chip per program; "
            "use backend 'torch' or more heads"
        )
    if gates_x.dtype not in (torch.float32, torch.float64):
        return f"the Triton kernel computes in float32 or float64, got {gates_x.dtype}"
    return None


def headwise_rnn(
    cell: str,
    gates_x: torch.Tensor,
    recurrent_weight: torch.Tensor,
    recurrent_bias: torch.Tensor | None,
    initial_state: tuple[torch.Tensor, ...],
    mask: torch.Tensor | None,
    projection: torch.Tensor | None,
    normalizer_clamp: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """See `hf_seqplugins.kernels.rnn.headwise_rnn` for the contract (inputs arrive validated).

    Raises `BackendUnavailableError` for inputs the kernel does not cover (see `unsupported_reason`).
    """
    reason = unsupported_reason(
        cell, gates_x, recurrent_weight, recurrent_bias, initial_state, mask, projection, normalizer_clamp
    )
    if reason is not None:
        raise BackendUnavailableError(f"backend 'triton' for 'headwise_rnn' cannot run these inputs: {reason}")
    keep = None if mask is None else mask.to(torch.int8).contiguous()
    differentiable = (gates_x, recurrent_weight, recurrent_bias, *initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in differentiable):
        outputs, *final_state = _HeadwiseRNNFunction.apply(cell, normalizer_clamp, keep, *differentiable)
        return outputs, tuple(final_state)
    outputs, final_state, _ = _forward(
        cell, gates_x, recurrent_weight, recurrent_bias, initial_state, keep, normalizer_clamp, store_history=False
    )
    return outputs, final_state


class _HeadwiseRNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, normalizer_clamp, keep, gates_x, recurrent_weight, recurrent_bias, *initial_state):
        gates_x, recurrent_weight = gates_x.contiguous(), recurrent_weight.contiguous()
        outputs, final_state, (state_history, recurrent_history) = _forward(
            cell, gates_x, recurrent_weight, recurrent_bias, initial_state, keep, normalizer_clamp, store_history=True
        )
        ctx.cell, ctx.normalizer_clamp, ctx.has_bias = cell, normalizer_clamp, recurrent_bias is not None
        ctx.save_for_backward(
            gates_x, recurrent_weight, keep, outputs, state_history, recurrent_history, *initial_state
        )
        return (outputs, *final_state)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_outputs, *grad_final_state):
        gates_x, recurrent_weight, keep, outputs, state_history, recurrent_history, *initial_state = ctx.saved_tensors
        grad_gates_x, grad_weight, grad_bias, grad_initial = _backward(
            ctx.cell,
            gates_x,
            recurrent_weight,
            initial_state,
            keep,
            ctx.normalizer_clamp,
            outputs,
            state_history,
            recurrent_history,
            grad_outputs,
            grad_final_state,
        )
        return (None, None, None, grad_gates_x, grad_weight, grad_bias if ctx.has_bias else None, *grad_initial)


def _launch_config(head_dim: int) -> dict:
    block_d = max(MIN_DOT_SIZE, triton.next_power_of_2(head_dim))
    # Software pipelining (num_stages > 1) stages every per-step load in shared memory several times over:
    # over 200 KB for the DH=64 sLSTM backward, more than an A100 has.
    return {"BLOCK_B": BLOCK_B, "BLOCK_D": block_d, "num_warps": 8 if block_d >= 64 else 4, "num_stages": 1}


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _forward(
    cell: str,
    gates_x: torch.Tensor,
    recurrent_weight: torch.Tensor,
    recurrent_bias: torch.Tensor | None,
    initial_state: tuple[torch.Tensor, ...],
    keep: torch.Tensor | None,
    normalizer_clamp: bool,
    store_history: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor]]:
    """Runs the forward kernel. keep: `[B, T]` int8 or None.

    Returns outputs `[B, T, NH, DH]`, the final state tuple and, for the backward, the histories: the
    states other than h after every step `[B, T, S-1, NH, DH]` and the recurrent parts `R h + b`
    `[B, T, G, NH, DH]` (both empty without `store_history`).
    """
    batch, steps, gates, heads, head_dim = gates_x.shape
    num_states = NUM_STATES[cell]
    gates_x = gates_x.contiguous()
    initial = torch.stack(initial_state, dim=1).contiguous()
    outputs = gates_x.new_empty((batch, steps, heads, head_dim))
    final = torch.empty_like(initial)
    state_history = gates_x.new_empty((batch, steps, num_states - 1, heads, head_dim) if store_history else (0,))
    recurrent_history = gates_x.new_empty((batch, steps, gates, heads, head_dim) if store_history else (0,))
    grid = (heads, triton.cdiv(batch, BLOCK_B))
    with _device_guard(gates_x.device):
        _forward_kernel[grid](
            gates_x,
            recurrent_weight.contiguous(),
            gates_x if recurrent_bias is None else recurrent_bias.contiguous(),
            initial,
            gates_x if keep is None else keep,
            outputs,
            final,
            state_history,
            recurrent_history,
            batch,
            steps,
            heads,
            head_dim,
            CELL=cell,
            NUM_GATES=gates,
            NUM_STATES=num_states,
            HAS_BIAS=recurrent_bias is not None,
            HAS_MASK=keep is not None,
            NORMALIZER_CLAMP=normalizer_clamp,
            STORE_HISTORY=store_history,
            **_launch_config(head_dim),
        )
    return outputs, tuple(state.clone() for state in final.unbind(1)), (state_history, recurrent_history)


def _backward(
    cell: str,
    gates_x: torch.Tensor,
    recurrent_weight: torch.Tensor,
    initial_state: tuple[torch.Tensor, ...],
    keep: torch.Tensor | None,
    normalizer_clamp: bool,
    outputs: torch.Tensor,
    state_history: torch.Tensor,
    recurrent_history: torch.Tensor,
    grad_outputs: torch.Tensor,
    grad_final_state: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Runs the backward kernel on what `_forward` stored; returns the gradients of gates_x `[B, T, G, NH, DH]`,
    recurrent_weight `[G, NH, DH, DH]`, recurrent_bias `[G, NH, DH]` (computed even without a bias) and the
    initial state tuple."""
    batch, steps, gates, heads, head_dim = gates_x.shape
    tiles = triton.cdiv(batch, BLOCK_B)
    initial = torch.stack(initial_state, dim=1).contiguous()
    grad_final = torch.stack(grad_final_state, dim=1).to(gates_x.dtype).contiguous()
    grad_gates_x = torch.empty_like(gates_x)
    grad_weight_partial = gates_x.new_empty((tiles, gates, heads, head_dim, head_dim))
    grad_bias_partial = gates_x.new_empty((tiles, gates, heads, head_dim))
    grad_initial = torch.empty_like(initial)
    with _device_guard(gates_x.device):
        _backward_kernel[(heads, tiles)](
            gates_x,
            recurrent_weight,
            initial,
            gates_x if keep is None else keep,
            outputs,
            state_history,
            recurrent_history,
            grad_outputs.to(gates_x.dtype).contiguous(),
            grad_final,
            grad_gates_x,
            grad_weight_partial,
            grad_bias_partial,
            grad_initial,
            batch,
            steps,
            heads,
            head_dim,
            CELL=cell,
            NUM_GATES=gates,
            NUM_STATES=NUM_STATES[cell],
            HAS_MASK=keep is not None,
            NORMALIZER_CLAMP=normalizer_clamp,
            **_launch_config(head_dim),
        )
    return grad_gates_x, grad_weight_partial.sum(0), grad_bias_partial.sum(0), grad_initial.unbind(1)
