"""TCNCA and its `dilated_conv` operator, what is specific to them: every backend of the convolution stack
against the explicit dilated sum ``y_t = sum_j w_j y_{t - j f^i}`` in float64 (with GELU between layers, and
from an initial window state); the receptive field (an impulse at t moves exactly outputs t .. t + R - 1, R from
the config's formula); chunked attention with C >= L against full causal attention and with C < L against
attention inside each block of C tokens; streaming (prefill then one token at a time) against the full forward
in float64, plain and left-padded; validation errors of the operator and the config; the Triton kernel's
refusals and its compilation for sm_80 / sm_90. The generic operator contract (gradients, splits, padding,
packed rows, poisoned buffers, bfloat16) is the operator kit's (`tests/test_operator_conformance.py`), the model
contract the conformance suite's.

Tolerances: float64 atol 1e-10 / rtol 1e-9 (observed about 1e-15).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from hf_seqplugins.core.backends import BackendUnavailableError
from hf_seqplugins.kernels.dilated_conv import OPERATOR, dilated_conv, receptive_field, state_shapes
from hf_seqplugins.plugins.tcnca import TCNCAConfig, TCNCAForCausalLM, chunked_attention
from hf_seqplugins.testing.triton_compile import run_compile_script

DOUBLE = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-9}
TINY = {
    "vocab_size": 32,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "intermediate_size": 32,
    "zdim": 8,
    "hdim": 16,
    "chunk_size": 4,
    "tcn_kernel_size": 2,
    "tcn_dilation_factor": 2,
    "tcn_depth": 2,
}


def backend_param(name):
    reason = OPERATOR.unavailable_reason(name, torch.device("cpu"))
    return pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=str(reason)), id=name)


BACKENDS = [backend_param(name) for name in ("reference", "torch", "triton")]


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DOUBLE)


def explicit_stack(x, weight, windows, dilation_factor, activation):
    """The dilated sums written out: each layer's inputs are its window then the sequence."""
    depth, channels, taps = weight.shape
    inputs = x
    for i in range(depth):
        history = torch.cat([windows[i], inputs], dim=1)
        span, dilation = windows[i].shape[1], dilation_factor**i
        out = torch.zeros_like(inputs)
        for t in range(inputs.shape[1]):
            for c in range(channels):
                out[:, t, c] = sum(weight[i, c, j] * history[:, span + t - j * dilation, c] for j in range(taps))
        inputs = F.gelu(out) if activation == "gelu" and i < depth - 1 else out
    return inputs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("taps, factor, depth, activation", [(3, 2, 3, "gelu"), (2, 3, 2, "none"), (4, 1, 2, "gelu")])
@pytest.mark.parametrize("with_state", [False, True], ids=["zeros", "state"])
def test_stack_equals_the_explicit_dilated_sums(backend, taps, factor, depth, activation, with_state):
    x = randn(2, 13, 3)
    weight = randn(depth, 3, taps, seed=1)
    windows = tuple(
        randn(*shape, seed=2 + i) if with_state else torch.zeros(shape, dtype=DOUBLE)
        for i, shape in enumerate(state_shapes(2, 3, taps, factor, depth))
    )
    y, final = dilated_conv(x, weight, windows if with_state else None, None, factor, activation, backend=backend)
    torch.testing.assert_close(y, explicit_stack(x, weight, windows, factor, activation), **TOL)
    # the final window of layer 0 is the last (K - 1) inputs (with the initial window in front)
    torch.testing.assert_close(final[0], torch.cat([windows[0], x], dim=1)[:, -(taps - 1) :], **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("taps, factor, depth", [(3, 2, 3), (2, 3, 2), (4, 1, 3), (2, 2, 4)])
def test_an_impulse_reaches_exactly_the_receptive_field(backend, taps, factor, depth):
    """An impulse at t moves outputs t .. t + R - 1 and none outside (with K < f the dilated taps leave gaps)."""
    config = TCNCAConfig(**{**TINY, "tcn_kernel_size": taps, "tcn_dilation_factor": factor, "tcn_depth": depth})
    field = config.receptive_field
    assert field == receptive_field(taps, factor, depth) == 1 + (taps - 1) * sum(factor**i for i in range(depth))
    if factor > 1:
        assert field == 1 + (taps - 1) * (factor**depth - 1) // (factor - 1)
    steps, at = field + 8, 3
    weight = randn(depth, 2, taps, seed=4).abs() + 0.1  # positive taps: no cancellation inside the field
    x = torch.zeros(1, steps, 2, dtype=DOUBLE)
    x[0, at] = 1.0
    y, _ = dilated_conv(x, weight, None, None, factor, "none", backend=backend)
    moved = (y[0].abs() > 0).any(-1).nonzero().flatten().tolist()
    assert moved[0] == at and moved[-1] == at + field - 1  # nothing before t or beyond t + R - 1
    if taps >= factor:  # the taps of consecutive layers then leave no gaps: every output in the field moves
        assert moved == list(range(at, at + field))


def explicit_attention(q, k, v, bias, chunk):
    """Softmax attention of every token to the earlier tokens of its block of `chunk` tokens, bias by offset."""
    steps = q.shape[1]
    t = torch.arange(steps)
    offset = t[:, None] - t[None, :]
    allowed = (offset >= 0) & (t[:, None] // chunk == t[None, :] // chunk)
    scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]) + bias[offset.clamp(0, bias.shape[0] - 1)]
    return torch.softmax(scores.masked_fill(~allowed, -torch.inf), dim=-1) @ v


def empty_attention_state(batch, chunk, zdim, vdim):
    return (
        torch.zeros(batch, chunk, zdim, dtype=DOUBLE),
        torch.zeros(batch, chunk, vdim, dtype=DOUBLE),
        torch.zeros(batch, dtype=DOUBLE),
    )


@pytest.mark.parametrize("chunk", [11, 16])
def test_one_chunk_covering_the_sequence_is_full_causal_attention(chunk):
    q, k, v = randn(2, 11, 4), randn(2, 11, 4, seed=1), randn(2, 11, 3, seed=2)
    out, _ = chunked_attention(q, k, v, torch.zeros(chunk, dtype=DOUBLE), empty_attention_state(2, chunk, 4, 3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, full, **TOL)
    bias = randn(chunk, seed=3)
    out, _ = chunked_attention(q, k, v, bias, empty_attention_state(2, chunk, 4, 3))
    torch.testing.assert_close(out, explicit_attention(q, k, v, bias, chunk), **TOL)


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_shorter_chunks_attend_inside_their_block_only(chunk):
    q, k, v = randn(2, 11, 4), randn(2, 11, 4, seed=1), randn(2, 11, 3, seed=2)
    bias = randn(chunk, seed=3)
    out, (_, _, count) = chunked_attention(q, k, v, bias, empty_attention_state(2, chunk, 4, 3))
    torch.testing.assert_close(out, explicit_attention(q, k, v, bias, chunk), **TOL)
    assert count.tolist() == [11.0, 11.0]


def tiny_model(**changes):
    torch.manual_seed(0)
    return TCNCAForCausalLM(TCNCAConfig(**{**TINY, **changes})).to(DOUBLE).eval()


@pytest.mark.parametrize("changes", [{}, {"chunk_size": 3, "tcn_kernel_size": 3, "tcn_activation": "none"}])
@pytest.mark.parametrize("prefill", [1, 5])
def test_streaming_steps_equal_the_full_forward(changes, prefill):
    model = tiny_model(**changes)
    ids = torch.randint(0, 32, (2, 14), generator=torch.Generator().manual_seed(1))
    full = model(ids, use_cache=False).logits
    out = model(ids[:, :prefill], cache=DynamicCache(config=model.config), use_cache=True)
    logits = [out.logits]
    for t in range(prefill, ids.shape[1]):
        out = model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
        logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, dim=1), full, **TOL)


def test_left_padded_streaming_equals_each_row_alone():
    model = tiny_model()
    ids = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    out = model(ids[:, :6], attention_mask=mask[:, :6], cache=DynamicCache(config=model.config), use_cache=True)
    logits = [out.logits]
    for t in range(6, 9):
        out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=out.cache, use_cache=True)
        logits.append(out.logits)
    logits = torch.cat(logits, dim=1)
    alone = model(ids[:1, 4:], use_cache=False).logits
    torch.testing.assert_close(logits[:1, 4:], alone, **TOL)
    torch.testing.assert_close(logits[1:], model(ids[1:], use_cache=False).logits, **TOL)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("zdim", 0, "zdim"),
        ("hdim", -1, "hdim"),
        ("chunk_size", 0, "chunk_size"),
        ("chunk_size", 2.0, "chunk_size"),
        ("tcn_kernel_size", 1, "tcn_kernel_size"),
        ("tcn_dilation_factor", 0, "tcn_dilation_factor"),
        ("tcn_depth", 0, "tcn_depth"),
        ("tcn_activation", "relu", "tcn_activation"),
        ("attention_dropout", 1.0, "attention_dropout"),
        ("mixer_dropout", -0.1, "mixer_dropout"),
    ],
)
def test_bad_configs_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        TCNCAConfig(**{**TINY, field: value})


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"x": torch.zeros(2, 6)}, ValueError, "x must be"),
        ({"x": torch.zeros(2, 6, 3, dtype=torch.long)}, TypeError, "x must be a floating"),
        ({"x": torch.zeros(2, 0, 3, dtype=DOUBLE)}, ValueError, "T=0"),
        ({"weight": torch.zeros(2, 4, 3, dtype=DOUBLE)}, ValueError, "weight must be"),
        ({"weight": torch.zeros(2, 3, 1, dtype=DOUBLE)}, ValueError, "K >= 2"),
        ({"mask": torch.ones(2, 5, dtype=torch.bool)}, ValueError, "mask must be"),
        ({"mask": torch.ones(2, 6)}, TypeError, "mask must be bool"),
        ({"initial_state": torch.zeros(2, 3)}, TypeError, "initial_state must be a tuple"),
        ({"initial_state": (torch.zeros(2, 2, 3, dtype=DOUBLE),)}, ValueError, "initial_state must have shapes"),
        ({"dilation_factor": 0}, ValueError, "dilation_factor"),
        ({"activation": "relu"}, ValueError, "activation"),
    ],
)
def test_operator_validation_names_the_argument(change, error, match):
    arguments = {
        "x": torch.zeros(2, 6, 3, dtype=DOUBLE),
        "weight": torch.zeros(2, 3, 3, dtype=DOUBLE),
        "initial_state": None,
        "mask": None,
        "dilation_factor": 2,
        "activation": "none",
        **change,
    }
    with pytest.raises(error, match=match):
        dilated_conv(**arguments, backend="torch")


def test_triton_refuses_other_dtypes_with_a_reason():
    pytest.importorskip("triton", reason="Triton is not installed (the triton extra)")
    from hf_seqplugins.kernels.dilated_conv import triton_impl

    x, weight = torch.zeros(1, 4, 3, dtype=torch.float16), torch.zeros(1, 3, 2, dtype=torch.float16)
    window = (torch.zeros(1, 1, 3, dtype=torch.float16),)
    reason = triton_impl.unsupported_reason(x, weight, window, None, 2, "none")
    assert reason is not None
    if triton_impl.triton_device_reason(x.device, triton_impl.INTERPRETED, triton_impl.__name__) is None:
        assert "float16 for x" in reason
    with pytest.raises(BackendUnavailableError, match="cannot run"):
        triton_impl.dilated_conv(x, weight, window, None, 2, "none")


COMPILE_SCRIPT = r"""
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hf_seqplugins.kernels.dilated_conv import triton_impl

assert not triton_impl.INTERPRETED
kernel = triton_impl._layer_kernel
compiled_for = []
for capability in (80, 90):
    for dtype in ("fp32", "fp64"):
        for gelu in (False, True):
            signature = {p.name: "constexpr" if p.is_constexpr else ("*" + dtype if p.name.endswith("_ptr") else "i32")
                         for p in kernel.params}
            constexprs = {"GELU": gelu, "BT": triton_impl.TIME_BLOCK, "BC": triton_impl.MAX_CHANNEL_BLOCK}
            source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
            compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
            assert compiled.asm["cubin"]
            compiled_for.append(f"sm_{capability} {dtype} gelu={gelu}")
kernels = sorted(name for name in dir(triton_impl) if name.endswith("_kernel"))
print(json.dumps({"kernels": kernels, "compiled": compiled_for}))
"""


def test_kernel_compiles_for_sm80_and_sm90():
    """The interpreter does not run the GPU compiler: lower the kernel to cubin for sm_80 and sm_90 in float32 and
    float64, with and without the GELU (no GPU needed), in a fresh interpreter without TRITON_INTERPRET."""
    pytest.importorskip("triton", reason="Triton is not installed (the triton extra); nothing to compile")
    result = run_compile_script(COMPILE_SCRIPT)
    assert result["kernels"] == ["_layer_kernel"], "a kernel is missing from the compile check"
    assert len(result["compiled"]) == 8


def test_the_aligned_fast_path_equals_the_general_layout():
    """No padding and an empty cache take the reshape path; an all-True mask takes the scatter layout."""
    q, k, v = randn(2, 10, 4), randn(2, 10, 4, seed=1), randn(2, 10, 3, seed=2)
    bias = randn(4, seed=3)
    fast, fast_state = chunked_attention(q, k, v, bias, empty_attention_state(2, 4, 4, 3))
    general, general_state = chunked_attention(
        q, k, v, bias, empty_attention_state(2, 4, 4, 3), torch.ones(2, 10, dtype=torch.bool)
    )
    torch.testing.assert_close(fast, general, **TOL)
    for a, b in zip(fast_state, general_state):
        torch.testing.assert_close(a, b, **TOL)


def test_a_padded_decoding_step_holds_the_state():
    model = tiny_model()
    ids = torch.randint(0, 32, (2, 7), generator=torch.Generator().manual_seed(3))
    out = model(ids[:, :6], cache=DynamicCache(config=model.config), use_cache=True)
    before = [layer.recurrent_states[0].clone() for layer in out.cache.layers]
    mask = torch.tensor([[1] * 6 + [0], [1] * 7])
    out = model(ids[:, 6:], attention_mask=mask, cache=out.cache, use_cache=True)
    after = [layer.recurrent_states[0] for layer in out.cache.layers]
    for held, now in zip(before, after):
        torch.testing.assert_close(now[0], held[0], atol=0, rtol=0)
        assert not torch.equal(now[1], held[1])
