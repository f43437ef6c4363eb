"""Triton backend of `test_time_memory` (Yaad and Moneta): the chunk loop of the dual form as one kernel.

The tokens are laid out as in the torch backend (`torch_impl.Layout`: whole chunks from each row's position in its
current chunk). One program per (batch row, head), grid ``(B * H,)``, walks the chunks in order and computes with
`tl.dot` what `torch_impl._chunk` computes: the memory at the chunk-start weights on the keys, the inner gradients
by hand (layer-norm and GELU backward), the decay mask ``Gamma_ti = eta_i beta_t / beta_i`` from a cumulative sum
of log-retentions, the per-token reads by the dual form (or with the chunk-start weights, "chunk_start"), and the
chunk's final accumulators.

The accumulators X1 `[D, E]`, X2 `[E, D]` stay in the output buffers between chunks and are processed in tiles of
BT hidden units (`_tile_width`: all E where a `[D, E]` block has at most `TILE_ELEMENTS` entries), so any E fits.
Per chunk: (Moneta) a pass over the tiles for the chunk-start q-norm; a pass summing the memory's pre-norm output
``u = sum_tiles gelu(K W2_tile^T) W1_tile^T``, then the layer norm and the output gradient ``gu`` on all D
channels; a pass that, per tile, forms the tile's hidden gradients ``dz``, adds the tile's share of the reads
(``H Hbar^T`` and ``beta H X1^T`` are sums over hidden units) and writes the tile's updated accumulators. The
chunk's q, k, v `[b, D]` and its `[b, b]` decay and score matrices are on chip throughout, so the chunk and D are
bounded (`MAX_CHUNK`, `MAX_HEAD_DIM`): the shared memory the compiled kernel needs grows with both, and these bounds
keep it within an A100's (`tests/test_test_time_memory.py` compiles the corners for sm_80 and sm_90). Block sizes
are powers of two (at least 16, `tl.dot`'s minimum), with masked loads; the layer norm and Moneta's q-norm count
the real channels only.

Memora is not computed here: its reads ``c softmax(X_t)`` are not linear in X, so they have no dual form (the
torch backend materialises them).

Backward: the Triton forward, the PyTorch backward. `_Function.backward` recomputes the call with the torch
backend (`torch_impl.test_time_memory`) under `torch.enable_grad()` and returns its gradients; the backward is not
itself differentiable (`once_differentiable`).
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
from .memory import LN_EPS

__all__ = ["test_time_memory", "unsupported_reason"]

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TILE_ELEMENTS = 1024
MAX_CHUNK = 32
MAX_HEAD_DIM = {torch.float32: 128, torch.float64: 64}
MIN_BLOCK = 16
VARIANT_CODES = {"yaad": 0, "moneta": 1}


@triton.jit
def _gelu(z):
    return 0.5 * z * (1 + tl.erf(z * 0.7071067811865476))


@triton.jit
def _gelu_derivative(z):
    return 0.5 * (1 + tl.erf(z * 0.7071067811865476)) + z * tl.exp(-0.5 * z * z) * 0.3989422804014327


@triton.jit
def _layer_norm(u, d_ok, dim, ln_eps):
    """Rows of `u` `[N, BD]` normalised over their `dim` real channels; (normed, 1 / std)."""
    mean = tl.sum(tl.where(d_ok[None, :], u, 0.0), axis=1) / dim
    centred = tl.where(d_ok[None, :], u - mean[:, None], 0.0)
    inverse_std = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / dim + ln_eps)
    return centred * inverse_std[:, None], inverse_std


@triton.jit
def _powered(a, ok, retention_power, eps):
    """``(a^2 + eps)^(q/2)`` at the real entries of `a`, 0 elsewhere: the terms of Moneta's q-norm."""
    return tl.where(ok, tl.exp(0.5 * retention_power * tl.log(a * a + eps)), 0.0)


@triton.jit
def _tile(base, e0, d_idx, d_ok, dim, hidden, BT: tl.constexpr):
    """Offsets and masks of the tile of hidden units `e0 .. e0 + BT` in X1 / C1 `[D, E]` and X2 / C2 `[E, D]`."""
    e_idx = e0 + tl.arange(0, BT)
    e_ok = e_idx < hidden
    at1 = base + d_idx[:, None] * hidden + e_idx[None, :]
    at2 = base + e_idx[:, None] * dim + d_idx[None, :]
    return at1, at2, d_ok[:, None] & e_ok[None, :], e_ok[:, None] & d_ok[None, :]


@triton.jit
def _load_tiles(first_ptr, second_ptr, at1, at2, ok1, ok2):
    return tl.load(first_ptr + at1, mask=ok1, other=0.0), tl.load(second_ptr + at2, mask=ok2, other=0.0)


@triton.jit
def _kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    g_ptr,
    x1_ptr,
    x2_ptr,
    c1_ptr,
    c2_ptr,
    last_ptr,
    out_ptr,
    x1_out_ptr,
    x2_out_ptr,
    c1_out_ptr,
    c2_out_ptr,
    length,
    chunk,
    dim,
    hidden,
    num_gates,
    bias_power,
    retention_power,
    eps,
    ln_eps,
    VARIANT: tl.constexpr,
    CHUNK_START: tl.constexpr,
    BB: tl.constexpr,
    BD: tl.constexpr,
    BT: tl.constexpr,
):
    """Laid-out q, k, v `[B*H, L, D]`, gates `[B*H, L, G]`, the state `[B*H, D, E]` / `[B*H, E, D]` and each
    program's chunk of its next token `last [B*H]` (all contiguous) -> outputs `[B*H, L, D]` and the final state.
    The accumulators live in `x1_out`, `x2_out` between chunks, read and written in tiles of BT hidden units."""
    row = tl.program_id(0).to(tl.int64)
    t_idx = tl.arange(0, BB)
    d_idx = tl.arange(0, BD)
    t_ok = t_idx < chunk
    d_ok = d_idx < dim
    base = row * dim * hidden
    last = tl.load(last_ptr + row)
    for e0 in range(0, hidden, BT):
        at1, at2, ok1, ok2 = _tile(base, e0, d_idx, d_ok, dim, hidden, BT)
        x1, x2 = _load_tiles(x1_ptr, x2_ptr, at1, at2, ok1, ok2)
        tl.store(x1_out_ptr + at1, x1, mask=ok1)
        tl.store(x2_out_ptr + at2, x2, mask=ok2)
        if last == 0:
            c1, c2 = _load_tiles(c1_ptr, c2_ptr, at1, at2, ok1, ok2)
            tl.store(c1_out_ptr + at1, c1, mask=ok1)
            tl.store(c2_out_ptr + at2, c2, mask=ok2)
    tl.debug_barrier()

    causal = t_idx[:, None] >= t_idx[None, :]
    token_ok = t_ok[:, None] & d_ok[None, :]
    is_last = t_idx == chunk - 1
    for n in range(0, length // chunk):
        # The first chunk starts from the given chunk-start weights, every later one from the accumulators.
        if n == 0:
            start1_ptr, start2_ptr = c1_ptr, c2_ptr
        else:
            start1_ptr, start2_ptr = x1_out_ptr, x2_out_ptr
        tokens = row * length + n * chunk + t_idx
        at_tokens = tokens[:, None] * dim + d_idx[None, :]
        q = tl.load(q_ptr + at_tokens, mask=token_ok, other=0.0)
        k = tl.load(k_ptr + at_tokens, mask=token_ok, other=0.0)
        v = tl.load(v_ptr + at_tokens, mask=token_ok, other=0.0)
        lr = tl.load(g_ptr + tokens * num_gates, mask=t_ok, other=0.0)
        decay = tl.load(g_ptr + tokens * num_gates + 1, mask=t_ok, other=1.0)

        scale1 = 1.0
        scale2 = 1.0
        if VARIANT == 1:
            total1 = tl.zeros((BD,), dtype=q.dtype)
            total2 = tl.zeros((BD,), dtype=q.dtype)
            for e0 in range(0, hidden, BT):
                at1, at2, ok1, ok2 = _tile(base, e0, d_idx, d_ok, dim, hidden, BT)
                c1, c2 = _load_tiles(start1_ptr, start2_ptr, at1, at2, ok1, ok2)
                total1 += tl.sum(_powered(c1, ok1, retention_power, eps), axis=1)
                total2 += tl.sum(_powered(c2, ok2, retention_power, eps), axis=0)
            scale1 = tl.exp(-(retention_power - 2) / retention_power * tl.log(tl.sum(total1, axis=0)))
            scale2 = tl.exp(-(retention_power - 2) / retention_power * tl.log(tl.sum(total2, axis=0)))

        u = tl.zeros((BB, BD), dtype=q.dtype)
        for e0 in range(0, hidden, BT):
            at1, at2, ok1, ok2 = _tile(base, e0, d_idx, d_ok, dim, hidden, BT)
            c1, c2 = _load_tiles(start1_ptr, start2_ptr, at1, at2, ok1, ok2)
            hbar = _gelu(tl.dot(k, tl.trans(c2 * scale2), input_precision="ieee"))
            u += tl.dot(hbar, tl.trans(c1 * scale1), input_precision="ieee")
        normed, inverse_std = _layer_norm(u, d_ok, dim, ln_eps)
        error = k + normed - v
        if VARIANT == 1:
            grad = bias_power * error * tl.exp(0.5 * (bias_power - 2) * tl.log(error * error + eps))
        else:
            delta = tl.load(g_ptr + tokens * num_gates + 2, mask=t_ok, other=1.0)
            norm = tl.sqrt(tl.sum(error * error, axis=1))
            smooth_sign = error / tl.sqrt(error * error + eps)
            grad = tl.where((norm <= delta)[:, None], error, delta[:, None] * smooth_sign)
        grad = tl.where(token_ok, grad, 0.0)
        mean_grad = tl.sum(grad, axis=1) / dim
        mean_grad_normed = tl.sum(grad * normed, axis=1) / dim
        gu = inverse_std[:, None] * (grad - mean_grad[:, None] - normed * mean_grad_normed[:, None])
        gu = tl.where(token_ok, gu, 0.0)
        tl.debug_barrier()  # every tile is read before the first is overwritten below

        log_beta = tl.cumsum(tl.log(decay), axis=0)
        gamma = tl.where(causal, tl.exp(tl.minimum(log_beta[:, None] - log_beta[None, :], 0.0)), 0.0) * lr[None, :]
        beta = tl.exp(log_beta)
        gamma_last = tl.sum(tl.where(is_last[:, None], gamma, 0.0), axis=0)
        beta_last = tl.exp(tl.sum(tl.where(is_last, log_beta, 0.0), axis=0))
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * gamma

        # Per tile: the tile's inner gradients, its share of every read, and its update.
        read = tl.zeros((BB, BD), dtype=q.dtype)
        similarity = tl.zeros((BB, BB), dtype=q.dtype)
        for e0 in range(0, hidden, BT):
            at1, at2, ok1, ok2 = _tile(base, e0, d_idx, d_ok, dim, hidden, BT)
            c1, c2 = _load_tiles(start1_ptr, start2_ptr, at1, at2, ok1, ok2)
            w1 = c1 * scale1
            z = tl.dot(k, tl.trans(c2 * scale2), input_precision="ieee")
            hbar = _gelu(z)
            dz = tl.dot(gu, w1, input_precision="ieee") * _gelu_derivative(z)
            x1, x2 = _load_tiles(x1_out_ptr, x2_out_ptr, at1, at2, ok1, ok2)
            if CHUNK_START:
                hidden_q = _gelu(tl.dot(q, tl.trans(c2 * scale2), input_precision="ieee"))
                read += tl.dot(hidden_q, tl.trans(w1), input_precision="ieee")
            else:
                pre = beta[:, None] * tl.dot(q, tl.trans(x2), input_precision="ieee")
                hidden_q = _gelu(scale2 * (pre - tl.dot(scores, dz, input_precision="ieee")))
                similarity += tl.dot(hidden_q, tl.trans(hbar), input_precision="ieee")
                read += beta[:, None] * tl.dot(hidden_q, tl.trans(x1), input_precision="ieee")
            x1 = beta_last * x1 - tl.dot(tl.trans(gamma_last[:, None] * gu), hbar, input_precision="ieee")
            x2 = beta_last * x2 - tl.dot(tl.trans(gamma_last[:, None] * dz), k, input_precision="ieee")
            tl.store(x1_out_ptr + at1, x1, mask=ok1)
            tl.store(x2_out_ptr + at2, x2, mask=ok2)
            if last == n + 1:
                tl.store(c1_out_ptr + at1, x1, mask=ok1)
                tl.store(c2_out_ptr + at2, x2, mask=ok2)
        if not CHUNK_START:
            read = scale1 * (read - tl.dot(similarity * gamma, gu, input_precision="ieee"))
        read_normed, _ = _layer_norm(read, d_ok, dim, ln_eps)
        tl.store(out_ptr + at_tokens, q + read_normed, mask=token_ok)
        tl.debug_barrier()


def _block(size: int) -> int:
    return max(MIN_BLOCK, triton.next_power_of_2(size))


def _tile_width(dim: int, hidden: int) -> int:
    """Hidden units per tile: all of them where a `[D, E]` block fits in `TILE_ELEMENTS`, else fewer."""
    return min(_block(hidden), max(MIN_BLOCK, TILE_ELEMENTS // _block(dim)))


def _device_context(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _forward(
    q, k, v, gates, x1, x2, c1, c2, count, mask, variant, memory_chunk, retrieval, bias_power, retention_power, eps
):
    batch, _, heads, dim = q.shape
    hidden = x1.shape[-1]
    layout = torch_impl.Layout.of(q, k, v, gates, count, mask, memory_chunk)
    length = layout.q.shape[2]
    laid = [t.reshape(batch * heads, length, -1).contiguous() for t in (layout.q, layout.k, layout.v, layout.gates)]
    state = [t.reshape(batch * heads, *t.shape[2:]).contiguous() for t in (x1, x2, c1, c2)]
    last = (layout.ends // memory_chunk).repeat_interleave(heads).contiguous()
    outputs = torch.empty_like(laid[0])
    finals = [torch.empty_like(t) for t in state]
    with _device_context(q.device):
        _kernel[(batch * heads,)](
            *laid,
            *state,
            last,
            outputs,
            *finals,
            length,
            memory_chunk,
            dim,
            hidden,
            gates.shape[-1],
            bias_power,
            retention_power,
            eps,
            LN_EPS,
            VARIANT=VARIANT_CODES[variant],
            CHUNK_START=retrieval == "chunk_start",
            BB=_block(memory_chunk),
            BD=_block(dim),
            BT=_tile_width(dim, hidden),
        )
    x1, x2, c1, c2 = (t.view(batch, heads, *t.shape[1:]) for t in finals)
    final_count = (layout.ends % memory_chunk).to(count.dtype)
    return layout.restore(outputs.view(batch, heads, length, dim)), (x1, x2, c1, c2, final_count)


class _Function(torch.autograd.Function):
    """The Triton forward, the PyTorch backward (recomputed from the saved inputs)."""

    @staticmethod
    def forward(ctx, q, k, v, gates, x1, x2, c1, c2, count, mask, options):
        ctx.options, ctx.mask = options, mask
        ctx.save_for_backward(q, k, v, gates, x1, x2, c1, c2, count)
        outputs, state = _forward(q, k, v, gates, x1, x2, c1, c2, count, mask, *options)
        return (outputs, *state)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads_out):
        saved = ctx.saved_tensors
        needed = ctx.needs_input_grad[:8]
        variant, memory_chunk, retrieval, bias_power, retention_power, eps = ctx.options
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(need) for t, need in zip(saved[:8], needed)]
            state = (*inputs[4:8], saved[8])
            outputs, final = torch_impl.test_time_memory(
                *inputs[:4], state, ctx.mask, variant, memory_chunk, retrieval, bias_power, retention_power, 1.0, eps
            )
            pairs = [(o, g) for o, g in zip((outputs, *final[:4]), grads_out[:5]) if o.requires_grad]
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
        return (*result, None, None, None)


def unsupported_reason(
    q, k, v, gates, state, mask, variant, memory_chunk, retrieval, bias_power, retention_power, memora_scale, eps
) -> str | None:
    """None when the Triton kernel computes these (validated) inputs, else why not."""
    reason = triton_device_reason(v.device, INTERPRETED, __name__)
    if reason is not None:
        return reason
    if variant not in VARIANT_CODES:
        return f"{variant!r} reads c softmax(X_t), which has no dual form (the torch backend materialises it)"
    if q.dtype not in (torch.float32, torch.float64):
        return f"the kernel computes in float32 or float64, got {q.dtype}"
    if q.shape[-1] > MAX_HEAD_DIM[q.dtype]:
        return f"head size D = {q.shape[-1]} exceeds the kernel's {MAX_HEAD_DIM[q.dtype]} in {q.dtype}"
    if memory_chunk > MAX_CHUNK:
        return f"memory_chunk {memory_chunk} exceeds the kernel's chunk block of at most {MAX_CHUNK} tokens"
    return None


def test_time_memory(
    q, k, v, gates, state, mask, variant, memory_chunk, retrieval, bias_power, retention_power, memora_scale, eps
):
    """See `hf_seqplugins.kernels.test_time_memory` for the contract (inputs arrive validated). Differentiable in
    q, k, v, gates and the accumulators, with gradients from the torch backend. Raises `BackendUnavailableError` for
    what `unsupported_reason` refuses."""
    reason = unsupported_reason(
        q, k, v, gates, state, mask, variant, memory_chunk, retrieval, bias_power, retention_power, memora_scale, eps
    )
    if reason is not None:
        raise BackendUnavailableError(f"backend 'triton' for 'test_time_memory' cannot run these inputs: {reason}")
    options = (variant, memory_chunk, retrieval, bias_power, retention_power, eps)
    tensors = (q, k, v, gates, *state[:4])
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        outputs, *final = _Function.apply(*tensors, state[4], mask, options)
        return outputs, tuple(final)
    return _forward(*tensors, state[4], mask, *options)
