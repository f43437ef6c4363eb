"""Triton backend of `linear_scan` (ParaRNN's linear solver; `docs/architectures/pararnn.md`, section 'The linear solver
(linear_scan)'): a chunked `tl.associative_scan` over time.

Recurrence per batch row and channel: ``s_t = a_t s_{t-1} + b_t`` for t = 1..T from ``s_0`` (the initial
state, zeros when None), with `a_t` a scalar (diagonal transitions) or an m x m block (m <= `MAX_BLOCK`).
A diagonal input is handled as the blocks with m = 1 (a `[B, T, D, 1, 1]` view, no copy).

Each step is the affine map ``s -> a_t s + b_t``; composing step 1 then step 2 gives
``(a_1, b_1) o (a_2, b_2) = (a_2 a_1, a_2 b_1 + b_2)``, an associative operator, so an inclusive scan over
time yields per step the map ``(A_t, B_t)`` from the state before the scan to ``s_t``.

Tiling: one program per (batch row, tile of `BD` channels), flattened onto grid axis 0. It walks the
sequence in chunks of `BT` steps. Per chunk it loads the m^2 entries of `a` and the m entries of `b` as
`[BT, BD]` tensors (strided loads from the native `[B, T, D, m, m]` / `[B, T, D, m]` layouts, any strides),
scans them along the time axis as a tuple of m^2 + m tensors with the combine above, applies the state
carried from the previous chunk, ``s = A_t s_carry + B_t``, stores the states and carries the chunk's last
state on. Steps past the sequence (the ragged last chunk) load as the identity map (a = I, b = 0), so the
chunk's last row is the carried state; channels past D are masked out of every load and store.

Backward (the adjoint recurrence; `docs/architectures/pararnn.md`, section 'Gradients: the adjoint recurrence'): with
g_t the gradient of s_t and g_final that of s_T, ``lambda_t = g_t + a_{t+1}^T lambda_{t+1}`` backwards from
``lambda_{T+1} = g_final`` (``a_{T+1}`` is taken as the identity). This is the same scan kernel with ``REVERSE=True``:
the program reads time backwards (no flipped copies), its "transitions" are `a` shifted by one step (a view starting at
t = 2) and transposed (the row and column strides swapped), its "inputs" are g and its initial state g_final. Then
``grad b_t = lambda_t``, ``grad a_t = lambda_t s_{t-1}^T`` (outer product per channel, elementwise for
diagonal transitions; a torch post-pass with s_0 = the initial state) and
``grad s_0 = a_1^T lambda_1``. The backward is not itself differentiable (`once_differentiable`).

Computation runs in the (validated) input dtype, float32 or float64; the per-program tile holds
``(m^2 + m) BT BD`` values, sized by `TILE_VALUES` (halved in float64).
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

__all__ = ["MAX_BLOCK", "linear_scan", "unsupported_reason"]

# triton.jit picks the interpreter when the kernels are defined, i.e. when this module is first imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MAX_BLOCK = 4
# Values of the scanned tuple per program in float32 (half that in float64); bounds the registers used.
TILE_VALUES = 4096
MAX_CHUNK = 64
MIN_CHUNK = 4
MAX_CHANNEL_TILE = 32
MAX_GRID_X = 2**31 - 1


@triton.jit
def _compose(A1, b1, A2, b2, M: tl.constexpr):
    """(A1, b1) then (A2, b2): ``(A2 A1, A2 b1 + b2)``; matrices as row-major tuples of M * M tensors."""
    A = ()
    for i in tl.static_range(M):
        for j in tl.static_range(M):
            entry = A2[i * M] * A1[j]
            for k in tl.static_range(1, M):
                entry += A2[i * M + k] * A1[k * M + j]
            A = A + (entry,)
    b = ()
    for i in tl.static_range(M):
        entry = b2[i]
        for k in tl.static_range(M):
            entry += A2[i * M + k] * b1[k]
        b = b + (entry,)
    return A + b


@triton.jit
def _combine1(*args):
    return _compose(args[0:1], args[1:2], args[2:3], args[3:4], 1)


@triton.jit
def _combine2(*args):
    return _compose(args[0:4], args[4:6], args[6:10], args[10:12], 2)


@triton.jit
def _combine3(*args):
    return _compose(args[0:9], args[9:12], args[12:21], args[21:24], 3)


@triton.jit
def _combine4(*args):
    return _compose(args[0:16], args[16:20], args[20:36], args[36:40], 4)


@triton.jit
def _scan_kernel(
    a_ptr,
    b_ptr,
    init_ptr,
    out_ptr,
    final_ptr,
    steps,
    a_steps,
    channels,
    tiles,
    sa_b,
    sa_t,
    sa_d,
    sa_i,
    sa_j,
    sb_b,
    sb_t,
    sb_d,
    sb_i,
    s0_b,
    s0_d,
    s0_i,
    so_b,
    so_t,
    so_d,
    so_i,
    sf_b,
    sf_d,
    sf_i,
    M: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
    HAS_INIT: tl.constexpr,
    REVERSE: tl.constexpr,
):
    """States of one batch row and `BD` channels: ``out[t] = a[t] out[t-1] + b[t]`` from `init` (zeros
    without HAS_INIT), final state to `final`. With REVERSE the program runs from t = steps - 1 down to 0,
    ``out[t] = a[t] out[t+1] + b[t]``. Step t reads `a` at t when t < a_steps, else uses the identity."""
    pid = tl.program_id(0)
    batch = (pid // tiles).to(tl.int64)
    cols = (pid % tiles) * BD + tl.arange(0, BD)
    col_ok = cols < channels
    rows = tl.arange(0, BT)
    wide_cols = cols.to(tl.int64)[None, :]  # offsets in int64: strided views can span more than 2^31 elements
    a_base = a_ptr + batch * sa_b + wide_cols * sa_d
    b_base = b_ptr + batch * sb_b + wide_cols * sb_d
    o_base = out_ptr + batch * so_b + wide_cols * so_d

    carry = ()
    for i in tl.static_range(M):
        if HAS_INIT:
            carry = carry + (tl.load(init_ptr + batch * s0_b + cols * s0_d + i * s0_i, mask=col_ok, other=0.0),)
        else:
            carry = carry + (tl.zeros([BD], dtype=out_ptr.dtype.element_ty),)

    for start in range(0, steps, BT):
        position = start + rows
        if REVERSE:
            t = (steps - 1 - position).to(tl.int64)
        else:
            t = position.to(tl.int64)
        row_ok = position < steps
        mask = row_ok[:, None] & col_ok[None, :]
        a_mask = mask & (t < a_steps)[:, None]
        A = ()
        for i in tl.static_range(M):
            for j in tl.static_range(M):
                entry = tl.load(a_base + t[:, None] * sa_t + i * sa_i + j * sa_j, mask=a_mask, other=0.0)
                if i == j:
                    entry = tl.where(a_mask, entry, 1.0)
                A = A + (entry,)
        B = ()
        for i in tl.static_range(M):
            B = B + (tl.load(b_base + t[:, None] * sb_t + i * sb_i, mask=mask, other=0.0),)
        if M == 1:
            scanned = tl.associative_scan(A + B, 0, _combine1)
        elif M == 2:
            scanned = tl.associative_scan(A + B, 0, _combine2)
        elif M == 3:
            scanned = tl.associative_scan(A + B, 0, _combine3)
        else:
            scanned = tl.associative_scan(A + B, 0, _combine4)
        last = rows[:, None] == BT - 1
        new_carry = ()
        for i in tl.static_range(M):
            state = scanned[M * M + i]
            for k in tl.static_range(M):
                state += scanned[i * M + k] * carry[k][None, :]
            tl.store(o_base + t[:, None] * so_t + i * so_i, state, mask=mask)
            new_carry = new_carry + (tl.sum(tl.where(last, state, 0.0), axis=0),)
        carry = new_carry

    for i in tl.static_range(M):
        tl.store(final_ptr + batch * sf_b + cols * sf_d + i * sf_i, carry[i], mask=col_ok)


def _tiles(m: int, steps: int, channels: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BT, BD): powers of two with ``(m^2 + m) BT BD`` within the tile budget, BT in [MIN_CHUNK, MAX_CHUNK]
    (at most the padded length), BD at most `MAX_CHANNEL_TILE` (half that for m >= 3)."""
    budget = TILE_VALUES // (2 if dtype == torch.float64 else 1)
    block = min(MAX_CHANNEL_TILE if m <= 2 else MAX_CHANNEL_TILE // 2, triton.next_power_of_2(max(channels, 1)))
    chunk = max(budget // ((m * m + m) * block), 1)
    chunk = 1 << (chunk.bit_length() - 1)
    chunk = max(MIN_CHUNK, min(chunk, MAX_CHUNK, triton.next_power_of_2(steps)))
    return chunk, block


def _device_context(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _scan(a5, b4, initial, *, reverse=False):
    """Run `_scan_kernel`. a5 `[B, Ta, D, m, m]` (any strides; steps t >= Ta use the identity), b4 `[B, T, D, m]`,
    initial None or `[B, D, m]`. Returns the states `[B, T, D, m]` and the last one `[B, D, m]` (contiguous)."""
    batch, steps, channels, m = b4.shape
    out = torch.empty((batch, steps, channels, m), dtype=b4.dtype, device=b4.device)
    final = torch.empty((batch, channels, m), dtype=b4.dtype, device=b4.device)
    if out.numel() == 0:
        return out, final.zero_() if initial is None else final.copy_(initial)
    chunk, block = _tiles(m, steps, channels, b4.dtype)
    tiles = triton.cdiv(channels, block)
    init = b4 if initial is None else initial
    init_strides = (0, 0, 0) if initial is None else initial.stride()
    with _device_context(b4.device):
        _scan_kernel[(batch * tiles,)](
            a5,
            b4,
            init,
            out,
            final,
            steps,
            a5.shape[1],
            channels,
            tiles,
            *a5.stride(),
            *b4.stride(),
            *init_strides,
            *out.stride(),
            *final.stride(),
            M=m,
            BT=chunk,
            BD=block,
            HAS_INIT=initial is not None,
            REVERSE=reverse,
            num_warps=4,
        )
    return out, final


def _as_blocks(a, b, initial_state, blocks):
    """Views with m = 1 for diagonal transitions: a `[B, T, D, 1, 1]`, b `[B, T, D, 1]`, state `[B, D, 1]`."""
    if blocks:
        return a, b, initial_state
    return a[..., None, None], b[..., None], None if initial_state is None else initial_state[..., None]


def _forward(a, b, initial_state, blocks):
    a5, b4, s0 = _as_blocks(a, b, initial_state, blocks)
    states, final = _scan(a5, b4, s0)
    if not blocks:
        states, final = states[..., 0], final[..., 0]
    return states, final


def _backward(a, states, initial_state, blocks, grad_states, grad_final):
    """Gradients of (a, b, initial_state) by the reverse scan; see the module docstring."""
    if grad_states is None:
        grad_states = torch.zeros_like(states)
    a5, g4, g_final = _as_blocks(a, grad_states, grad_final, blocks)
    # lambda_t = g_t + a_{t+1}^T lambda_{t+1}: transitions a[:, 1:] (T - 1 steps), transposed by their strides.
    shifted = a5[:, 1:].transpose(-1, -2)
    lam, _ = _scan(shifted, g4, g_final, reverse=True)
    if not blocks:
        lam = lam[..., 0]
    previous = torch.empty_like(states)
    previous[:, 1:] = states[:, :-1]
    if initial_state is None:
        previous[:, 0] = 0
    else:
        previous[:, 0] = initial_state
    if blocks:
        grad_a = lam[..., :, None] * previous[..., None, :]
        grad_initial = (a[:, 0].transpose(-1, -2) @ lam[:, 0, :, :, None])[..., 0]
    else:
        grad_a = lam * previous
        grad_initial = a[:, 0] * lam[:, 0]
    return grad_a, lam, grad_initial


class _LinearScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, initial_state, blocks):
        states, final = _forward(a, b, initial_state, blocks)
        ctx.blocks = blocks
        ctx.has_initial = initial_state is not None
        ctx.save_for_backward(a, states, *([initial_state] if initial_state is not None else []))
        return states, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states, grad_final):
        a, states, *initial = ctx.saved_tensors
        initial_state = initial[0] if ctx.has_initial else None
        grad_a, grad_b, grad_initial = _backward(a, states, initial_state, ctx.blocks, grad_states, grad_final)
        return grad_a, grad_b, grad_initial if ctx.has_initial else None, None


def unsupported_reason(a, b, initial_state, blocks) -> str | None:
    """None when the Triton kernel computes these (validated) inputs, else why not."""
    reason = triton_device_reason(b.device, INTERPRETED, __name__)
    if reason is not None:
        return reason
    for name, tensor in (("a", a), ("b", b), ("initial_state", initial_state)):
        if tensor is not None and tensor.dtype not in (torch.float32, torch.float64):
            return f"the kernel computes in float32 or float64, got {tensor.dtype} for {name}"
    if blocks and b.shape[-1] > MAX_BLOCK:
        return (
            f"block size m = {b.shape[-1]} exceeds {MAX_BLOCK}, the largest the kernel's scan holds "
            "(m^2 + m values per step and channel); use backend 'torch'"
        )
    channels = b.shape[2]
    m = b.shape[-1] if blocks else 1
    _, block = _tiles(m, b.shape[1], channels, b.dtype)
    programs = b.shape[0] * triton.cdiv(channels, block)
    if programs > MAX_GRID_X:
        return f"{programs} programs (batch x channel tiles) exceed the launch grid's limit of {MAX_GRID_X}"
    return None


def linear_scan(a, b, initial_state, blocks):
    """See `hf_seqplugins.kernels.linear_scan` for the contract (inputs arrive validated).

    a `[B, T, D]` and b `[B, T, D]` (blocks=False) or a `[B, T, D, m, m]` and b `[B, T, D, m]` with
    m <= `MAX_BLOCK` (blocks=True); initial_state None or b's shape without T. Returns the states (b's shape)
    and the final state, in b's dtype; differentiable in a, b and initial_state. Raises
    `BackendUnavailableError` for what `unsupported_reason` refuses.
    """
    reason = unsupported_reason(a, b, initial_state, blocks)
    if reason is not None:
        raise BackendUnavailableError(f"backend 'triton' for 'linear_scan' cannot run these inputs: {reason}")
    inputs = (a, b) + (() if initial_state is None else (initial_state,))
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _LinearScanFunction.apply(a, b, initial_state, blocks)
    return _forward(a, b, initial_state, blocks)
