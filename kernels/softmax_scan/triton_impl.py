"""Triton backend of `softmax_scan` (`docs/architectures/aaren.md`): the online-softmax loop as a kernel.

Per batch row and head, from the initial state `(m, c, a)` (validation sets m = -inf where c = 0), every token:

    m' = max(m, s_t),  c' = c exp(m - m') + exp(s_t - m'),  a' = a exp(m - m') + exp(s_t - m') v_t,  o_t = a' / c'

One program per (batch row and head, block of `BD` value columns), grid ``(B * H, cdiv(D, BD))``, walks the
sequence in order holding `(m, c, a)` in registers: per step it loads one score and `BD` values (masked loads,
so D need not be a power of two), stores the output and, after the last step, the final state (m and c from the
first column block only; every block computes the same m and c). Scores and values are read with their own
strides. A padded token is read as the score -inf (selected in a torch pre-pass), a step that holds the state:
``m' = m``, ``exp(m - m') = 1``, ``exp(-inf - m') = 0``. Where ``m'`` is -inf (an empty prefix so far) both
exponentials are measured against 0 instead (``exp(-inf - (-inf))`` would be NaN), and the output of an empty
prefix (c = 0) is 0. Outputs at padded steps are those of the held state.

Computation runs in the (validated) input dtype, float32 or float64.

Backward: the Triton forward, the chunked PyTorch backward. `_SoftmaxScanFunction.backward` recomputes the
forward with the torch chunked backend (`torch_impl.softmax_scan`) under `torch.enable_grad()` and returns its
gradients of scores, values and the initial state `(m, c, a)`; the backward is not itself differentiable
(`once_differentiable`).
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

from . import torch_impl

__all__ = ["softmax_scan", "unsupported_reason"]

# triton.jit picks the interpreter when the kernels are defined, i.e. when this module is first imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MAX_VALUE_BLOCK = 128
MAX_GRID_X = 2**31 - 1
MAX_GRID_Y = 65535


@triton.jit
def _scan_kernel(
    s_ptr,
    v_ptr,
    m0_ptr,
    c0_ptr,
    a0_ptr,
    out_ptr,
    m_ptr,
    c_ptr,
    a_ptr,
    steps,
    heads,
    dim,
    ss_b,
    ss_t,
    ss_h,
    sv_b,
    sv_t,
    sv_h,
    sv_d,
    BD: tl.constexpr,
):
    """Outputs `[B, T, H, D]` (contiguous) and the final state (contiguous `[B, H]`, `[B, H]`, `[B, H, D]`) of one
    (batch row, head) and `BD` value columns, from the initial state (contiguous, the same shapes)."""
    row = tl.program_id(0).to(tl.int64)  # batch * heads + head
    block = tl.program_id(1)
    batch = row // heads
    head = row % heads
    cols = block * BD + tl.arange(0, BD)
    col_ok = cols < dim
    wide_cols = cols.to(tl.int64)
    # pointers advanced by one step's stride per token: no offset t * stride that could overflow int32
    s_at = s_ptr + batch * ss_b + head * ss_h
    v_at = v_ptr + batch * sv_b + head * sv_h + wide_cols * sv_d
    out_at = out_ptr + (batch * steps * heads + head) * dim + wide_cols

    m = tl.load(m0_ptr + row)
    c = tl.load(c0_ptr + row)
    a = tl.load(a0_ptr + row * dim + wide_cols, mask=col_ok, other=0.0)
    for _ in range(0, steps):
        score = tl.load(s_at)
        value = tl.load(v_at, mask=col_ok, other=0.0)
        new_m = tl.maximum(m, score)
        reference = tl.where(new_m == -float("inf"), 0.0, new_m)  # an empty prefix so far: never -inf - (-inf)
        keep = tl.exp(m - reference)
        weight = tl.exp(score - reference)
        c = c * keep + weight
        a = a * keep + weight * value
        m = new_m
        tl.store(out_at, a / tl.where(c == 0.0, 1.0, c), mask=col_ok)
        s_at += ss_t
        v_at += sv_t
        out_at += heads * dim
    tl.store(a_ptr + row * dim + wide_cols, a, mask=col_ok)
    if block == 0:
        tl.store(m_ptr + row, m)
        tl.store(c_ptr + row, c)


def _block(dim: int) -> int:
    return min(MAX_VALUE_BLOCK, triton.next_power_of_2(max(dim, 1)))


def _device_context(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _forward(scores, values, m0, c0, a0, mask):
    batch, steps, heads, dim = values.shape
    if mask is not None:
        scores = torch.where(mask[..., None], scores, -torch.inf)
    m0, c0, a0 = (t.contiguous() for t in (m0, c0, a0))
    outputs = torch.empty((batch, steps, heads, dim), dtype=values.dtype, device=values.device)
    m, c = torch.empty_like(m0), torch.empty_like(c0)
    a = torch.empty_like(a0)
    block = _block(dim)
    with _device_context(values.device):
        _scan_kernel[(batch * heads, triton.cdiv(max(dim, 1), block))](
            scores,
            values,
            m0,
            c0,
            a0,
            outputs,
            m,
            c,
            a,
            steps,
            heads,
            dim,
            *scores.stride(),
            *values.stride(),
            BD=block,
        )
    return outputs, m, c, a


class _SoftmaxScanFunction(torch.autograd.Function):
    """The Triton forward, the chunked PyTorch backward (recomputed from the saved inputs)."""

    @staticmethod
    def forward(ctx, scores, values, m0, c0, a0, mask, chunk_size):
        ctx.chunk_size = chunk_size
        ctx.has_mask = mask is not None
        ctx.save_for_backward(scores, values, m0, c0, a0, *([mask] if mask is not None else []))
        return _forward(scores, values, m0, c0, a0, mask)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_outputs, d_m, d_c, d_a):
        scores, values, m0, c0, a0, *rest = ctx.saved_tensors
        mask = rest[0] if ctx.has_mask else None
        needed = ctx.needs_input_grad[:5]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(need) for t, need in zip((scores, values, m0, c0, a0), needed)]
            outputs, state = torch_impl.softmax_scan(inputs[0], inputs[1], tuple(inputs[2:]), mask, ctx.chunk_size)
            pairs = [(o, g) for o, g in zip((outputs, *state), (d_outputs, d_m, d_c, d_a)) if o.requires_grad]
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(
                torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
                if pairs and wanted
                else [None] * len(wanted)
            )
        result = []
        for t, need in zip(inputs, needed):
            grad = next(grads) if need else None
            result.append(torch.zeros_like(t) if need and grad is None else grad)
        return (*result, None, None)


def unsupported_reason(scores, values, initial_state, mask, chunk_size) -> str | None:
    """None when the Triton kernel computes these (validated) inputs, else why not."""
    reason = triton_device_reason(values.device, INTERPRETED, __name__)
    if reason is not None:
        return reason
    named = (("scores", scores), ("values", values), *zip(("m", "c", "a"), initial_state))
    for name, tensor in named:
        if tensor.dtype not in (torch.float32, torch.float64):
            return f"the kernel computes in float32 or float64, got {tensor.dtype} for {name}"
    batch, _, heads, dim = values.shape
    if batch * heads > MAX_GRID_X:
        return f"B * H = {batch * heads} programs exceed the launch grid's limit of {MAX_GRID_X}"
    if triton.cdiv(max(dim, 1), _block(dim)) > MAX_GRID_Y:
        return f"D = {dim} needs more value blocks than the launch grid's limit of {MAX_GRID_Y}"
    return None


def softmax_scan(scores, values, initial_state, mask, chunk_size):
    """See `hf_seqplugins.kernels.softmax_scan` for the contract (inputs arrive validated).

    The Triton forward, the chunked PyTorch backward: differentiable in scores, values and the initial state
    `(m, c, a)`, with gradients from `torch_impl.softmax_scan` (`chunk_size` is used there only). Returns
    `(outputs [B, T, H, D], (m, c, a))` in the input dtype. Raises `BackendUnavailableError` for what
    `unsupported_reason` refuses.
    """
    reason = unsupported_reason(scores, values, initial_state, mask, chunk_size)
    if reason is not None:
        raise BackendUnavailableError(f"backend 'triton' for 'softmax_scan' cannot run these inputs: {reason}")
    m0, c0, a0 = initial_state
    inputs = (scores, values, m0, c0, a0)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        outputs, m, c, a = _SoftmaxScanFunction.apply(*inputs, mask, chunk_size)
    else:
        outputs, m, c, a = _forward(*inputs, mask)
    return outputs, (m, c, a)
