"""Triton backend of `feature_linear_attention` (`docs/architectures/jrt.md`): the recurrence as a kernel.

One program per (batch row and head, block of `BD` value columns), grid ``(B * H, cdiv(D, BD))``, walks the
sequence in order holding its `[BF, BD]` slice of S and all of z (`BF` = F rounded up to a power of two) in
registers; per step it loads q_t, k_t (`BF`) and v_t (`BD`) with masked loads, updates ``S += k_t v_t^T``,
``z += k_t``, and stores ``q_t^T S / (q_t . z + eps)``; after the last step it stores the final state (z from the
first column block only: every block computes the same z). Inputs are read with their own strides. Padded
tokens arrive as zero q, k, v (validation), so they add nothing: the state is held there.

Computation runs in the (validated) input dtype, float32 or float64. F is limited to `MAX_FEATURES` (the state
slice must fit in registers).

Backward: the Triton forward, the chunked PyTorch backward. `_Function.backward` recomputes the forward with the
torch chunked backend (`torch_impl.feature_linear_attention`) under `torch.enable_grad()` and returns its gradients
of q, k, v and the initial state `(S, z)`; the backward is not itself differentiable (`once_differentiable`).
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

__all__ = ["feature_linear_attention", "unsupported_reason"]

# triton.jit picks the interpreter when the kernels are defined, i.e. when this module is first imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MAX_FEATURES = 512
MAX_VALUE_BLOCK = 64
MAX_GRID_X = 2**31 - 1
MAX_GRID_Y = 65535


@triton.jit
def _kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    s0_ptr,
    z0_ptr,
    out_ptr,
    s_ptr,
    z_ptr,
    steps,
    heads,
    features,
    dim,
    eps,
    sq_b,
    sq_t,
    sq_h,
    sq_f,
    sk_b,
    sk_t,
    sk_h,
    sk_f,
    sv_b,
    sv_t,
    sv_h,
    sv_d,
    BF: tl.constexpr,
    BD: tl.constexpr,
):
    """Outputs `[B, T, H, D]` (contiguous) and the final state (contiguous `[B, H, F, D]`, `[B, H, F]`) of one
    (batch row, head) and `BD` value columns, from the initial state (contiguous, the same shapes)."""
    row = tl.program_id(0).to(tl.int64)  # batch * heads + head
    block = tl.program_id(1)
    batch = row // heads
    head = row % heads
    feats = tl.arange(0, BF)
    cols = block * BD + tl.arange(0, BD)
    feat_ok = feats < features
    col_ok = cols < dim
    wide_feats = feats.to(tl.int64)
    wide_cols = cols.to(tl.int64)
    # pointers advanced by one step's stride per token: no offset t * stride that could overflow int32
    q_at = q_ptr + batch * sq_b + head * sq_h + wide_feats * sq_f
    k_at = k_ptr + batch * sk_b + head * sk_h + wide_feats * sk_f
    v_at = v_ptr + batch * sv_b + head * sv_h + wide_cols * sv_d
    out_at = out_ptr + (batch * steps * heads + head) * dim + wide_cols
    state_offsets = row * features * dim + wide_feats[:, None] * dim + wide_cols[None, :]
    state_ok = feat_ok[:, None] & col_ok[None, :]

    s = tl.load(s0_ptr + state_offsets, mask=state_ok, other=0.0)
    z = tl.load(z0_ptr + row * features + wide_feats, mask=feat_ok, other=0.0)
    for _ in range(0, steps):
        q = tl.load(q_at, mask=feat_ok, other=0.0)
        k = tl.load(k_at, mask=feat_ok, other=0.0)
        v = tl.load(v_at, mask=col_ok, other=0.0)
        s += k[:, None] * v[None, :]
        z += k
        numerator = tl.sum(q[:, None] * s, axis=0)
        denominator = tl.sum(q * z, axis=0) + eps
        tl.store(out_at, numerator / denominator, mask=col_ok)
        q_at += sq_t
        k_at += sk_t
        v_at += sv_t
        out_at += heads * dim
    tl.store(s_ptr + state_offsets, s, mask=state_ok)
    if block == 0:
        tl.store(z_ptr + row * features + wide_feats, z, mask=feat_ok)


def _blocks(features: int, dim: int) -> tuple[int, int]:
    return triton.next_power_of_2(max(features, 1)), min(MAX_VALUE_BLOCK, triton.next_power_of_2(max(dim, 1)))


def _device_context(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _forward(q, k, v, s0, z0, eps):
    batch, steps, heads, features = q.shape
    dim = v.shape[-1]
    s0, z0 = s0.contiguous(), z0.contiguous()
    outputs = torch.empty((batch, steps, heads, dim), dtype=v.dtype, device=v.device)
    s, z = torch.empty_like(s0), torch.empty_like(z0)
    feature_block, value_block = _blocks(features, dim)
    with _device_context(v.device):
        _kernel[(batch * heads, triton.cdiv(max(dim, 1), value_block))](
            q,
            k,
            v,
            s0,
            z0,
            outputs,
            s,
            z,
            steps,
            heads,
            features,
            dim,
            eps,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            BF=feature_block,
            BD=value_block,
        )
    return outputs, s, z


class _Function(torch.autograd.Function):
    """The Triton forward, the chunked PyTorch backward (recomputed from the saved inputs)."""

    @staticmethod
    def forward(ctx, q, k, v, s0, z0, eps, chunk_size):
        ctx.eps, ctx.chunk_size = eps, chunk_size
        ctx.save_for_backward(q, k, v, s0, z0)
        return _forward(q, k, v, s0, z0, eps)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_outputs, d_s, d_z):
        saved = ctx.saved_tensors
        needed = ctx.needs_input_grad[:5]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(need) for t, need in zip(saved, needed)]
            outputs, state = torch_impl.feature_linear_attention(
                *inputs[:3], tuple(inputs[3:]), None, ctx.eps, ctx.chunk_size
            )
            pairs = [(o, g) for o, g in zip((outputs, *state), (d_outputs, d_s, d_z)) if o.requires_grad]
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


def unsupported_reason(q, k, v, initial_state, mask, eps, chunk_size) -> str | None:
    """None when the Triton kernel computes these (validated) inputs, else why not."""
    reason = triton_device_reason(v.device, INTERPRETED, __name__)
    if reason is not None:
        return reason
    named = (("q", q), ("k", k), ("v", v), *zip(("S", "z"), initial_state))
    for name, tensor in named:
        if tensor.dtype not in (torch.float32, torch.float64):
            return f"the kernel computes in float32 or float64, got {tensor.dtype} for {name}"
    batch, _, heads, features = q.shape
    dim = v.shape[-1]
    if features > MAX_FEATURES:
        return f"F = {features} features exceed the kernel's register budget of {MAX_FEATURES}"
    if batch * heads > MAX_GRID_X:
        return f"B * H = {batch * heads} programs exceed the launch grid's limit of {MAX_GRID_X}"
    if triton.cdiv(max(dim, 1), _blocks(features, dim)[1]) > MAX_GRID_Y:
        return f"D = {dim} needs more value blocks than the launch grid's limit of {MAX_GRID_Y}"
    return None


def feature_linear_attention(q, k, v, initial_state, mask, eps, chunk_size):
    """See `hf_seqplugins.kernels.feature_linear_attention` for the contract (inputs arrive validated).

    The Triton forward, the chunked PyTorch backward: differentiable in q, k, v and the initial state `(S, z)`,
    with gradients from `torch_impl.feature_linear_attention` (`chunk_size` is used there only; `mask` is not
    needed: validation zeroed the padded inputs). Returns `(outputs [B, T, H, D], (S, z))` in the input dtype.
    Raises `BackendUnavailableError` for what `unsupported_reason` refuses.
    """
    reason = unsupported_reason(q, k, v, initial_state, mask, eps, chunk_size)
    if reason is not None:
        raise BackendUnavailableError(
            f"backend 'triton' for 'feature_linear_attention' cannot run these inputs: {reason}"
        )
    s0, z0 = initial_state
    inputs = (q, k, v, s0, z0)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        outputs, s, z = _Function.apply(*inputs, eps, chunk_size)
    else:
        outputs, s, z = _forward(*inputs, eps)
    return outputs, (s, z)
