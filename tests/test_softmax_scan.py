"""The `softmax_scan` operator (Aaren), what is specific to it: every backend against the explicit prefix softmax
``o_t = softmax(s_{<=t}) @ v_{<=t}`` (the initial state as one more token before the first, padding dropped) in
float64 with scores scaled by 5 and by 30; a long float32 sequence (T = 4096) against that oracle; scores
climbing far inside one chunk; chunk sizes of 1 and beyond T; one-token calls on each backend; rows of padding
only from the empty state; `softmax_scan_step`; the empty initial state whatever its m; validation errors;
the Triton kernel's refusals and its compilation for sm_80 / sm_90 (the interpreter runs no GPU compiler). The
generic contract checks (every backend and example case against the reference in float64 with gradients, chunk
sizes 2, 5, 16, single steps, splits, left padding, packed rows, poisoned buffers, bfloat16) live in the
operator conformance kit (`hf_seqplugins.testing.operators`).

Without CUDA the Triton kernel runs in Triton's interpreter (about 0.5 ms per token and program), so its long
sequence has B * H = 2 programs.
Tolerances: float64 against the oracle atol 1e-10 / rtol 1e-9 (observed about 1e-14); float32 against the
float64 oracle 3e-5 relative to the scale (observed at T = 4096: up to 4e-6 for the token loops, reference and
triton, 3e-7 for the chunked and doubling scans).
"""

import math

import pytest
import torch

from hf_seqplugins.core.backends import BackendUnavailableError
from hf_seqplugins.kernels.softmax_scan import OPERATOR, empty_state, softmax_scan, softmax_scan_step
from hf_seqplugins.testing.triton_compile import run_compile_script

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DOUBLE = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-9}
FLOAT32_RELATIVE = 3e-5
BACKENDS = ("reference", "torch", "doubling", "triton")


def backend_param(name):
    reason = OPERATOR.unavailable_reason(name, DEVICE)
    return pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=str(reason)), id=name)


ALL = [backend_param(name) for name in BACKENDS]
FAST = [backend_param(name) for name in BACKENDS if name != "reference"]


def make_inputs(batch=2, steps=37, heads=3, dim=5, *, scale=1.0, seed=0, dtype=DOUBLE, with_state=True):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=DOUBLE)

    scores = scale * randn(batch, steps, heads)
    values = randn(batch, steps, heads, dim)
    state = None
    if with_state:
        state = (scale * randn(batch, heads), randn(batch, heads).abs() + 0.5, randn(batch, heads, dim))
        state = tuple(t.to(DEVICE, dtype) for t in state)
    return scores.to(DEVICE, dtype), values.to(DEVICE, dtype), state


def oracle(scores, values, state=None, mask=None, block=512):
    """The explicit prefix softmax in float64: ``o_t = softmax(s_{<=t}) @ v_{<=t}`` over the real tokens, with the
    initial state `(m, c, a)` as one more token before the first (score m + log c, value a / c). Returns
    (outputs [B, T, H, D], the final state (m, c, a) of the whole prefix)."""
    scores, values = scores.to(DOUBLE), values.to(DOUBLE)
    batch, steps, heads, dim = values.shape
    keys = scores.transpose(1, 2)  # [B, H, T]
    vals = values.transpose(1, 2)  # [B, H, T, D]
    real = torch.ones(batch, steps, dtype=torch.bool, device=scores.device) if mask is None else mask
    keys = torch.where(real[:, None], keys, -math.inf)
    if state is not None:
        m, c, a = (t.to(DOUBLE) for t in state)
        keys = torch.cat([(m + c.log())[..., None], keys], dim=-1)
        vals = torch.cat([(a / c[..., None])[:, :, None], vals], dim=2)
    first = keys.shape[-1] - steps  # 1 with a state token, else 0
    outputs = []
    for start in range(0, steps, block):  # query rows in blocks: T x T logits at T = 4096 would be large
        rows = torch.arange(start, min(start + block, steps), device=scores.device)
        visible = torch.arange(keys.shape[-1], device=scores.device)[None, :] <= rows[:, None] + first
        logits = torch.where(visible, keys[:, :, None, :], -math.inf)  # [B, H, rows, keys]
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows with no real token yet: 0
        outputs.append(weights @ vals)
    outputs = torch.cat(outputs, dim=2).transpose(1, 2)
    m = keys.max(-1).values
    exponentials = torch.exp(keys - m[..., None])
    return outputs, (m, exponentials.sum(-1), (exponentials[..., None] * vals).sum(-2))


def visible_rows(mask, state):
    """[B, T] True where the output is specified and non-empty: a real token (any with a state, else from the
    row's first real token on)."""
    if state is not None:
        return mask
    return mask & (mask.cumsum(1) > 0)


def random_mask(batch, steps, seed=1):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, steps, generator=generator) > 0.3
    mask[0, :4] = False  # left padding
    mask[-1, -3:] = False  # right padding
    return mask.to(DEVICE)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("scale", [5.0, 30.0])
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "empty"])
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_prefix_softmax_oracle(backend, scale, with_state, masked):
    scores, values, state = make_inputs(scale=scale, with_state=with_state)
    mask = random_mask(*scores.shape[:2]) if masked else None
    outputs, final = softmax_scan(scores, values, state, mask, chunk_size=8, backend=backend)
    expected, expected_final = oracle(scores, values, state, mask)
    assert torch.isfinite(outputs).all()
    rows = torch.ones(scores.shape[:2], dtype=torch.bool, device=DEVICE) if mask is None else mask
    rows = visible_rows(rows, state)
    torch.testing.assert_close(outputs[rows], expected[rows], **TOL)
    for got, want in zip(final, expected_final):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("backend", ALL)
def test_long_sequence_float32(backend):
    heads = 2 if DEVICE.type == "cpu" else 4
    scores, values, state = make_inputs(batch=1, steps=4096, heads=heads, dim=8, scale=5.0, dtype=torch.float32)
    outputs, final = softmax_scan(scores, values, state, backend=backend)
    expected, expected_final = oracle(scores, values, state)
    assert outputs.dtype == torch.float32 and all(t.dtype == torch.float32 for t in final)
    assert torch.isfinite(outputs).all() and all(torch.isfinite(t).all() for t in final)
    assert (outputs.double() - expected).abs().max() <= FLOAT32_RELATIVE * values.abs().max()
    assert torch.equal(final[0].double(), expected_final[0])
    for got, want in zip(final[1:], expected_final[1:]):
        assert (got.double() - want).abs().max() <= FLOAT32_RELATIVE * want.abs().max()


@pytest.mark.parametrize("backend", FAST)
def test_scores_climbing_inside_one_chunk(backend):
    """Scores rising by 400 inside one chunk of 64 in float32: every prefix measured against one reference per
    chunk would underflow to 0 / 0 (exp(-400) is 0 in float32)."""
    scores, values, _ = make_inputs(batch=1, steps=50, heads=2, dim=4, dtype=torch.float32)
    scores = scores + torch.linspace(-200, 200, 50, device=DEVICE)[None, :, None]
    outputs, final = softmax_scan(scores, values, chunk_size=64, backend=backend)
    expected, expected_final = oracle(scores, values)
    assert torch.isfinite(outputs).all()
    assert (outputs.double() - expected).abs().max() <= FLOAT32_RELATIVE * values.abs().max()
    torch.testing.assert_close(final[1].double(), expected_final[1], rtol=FLOAT32_RELATIVE, atol=0)


def with_gradients(backend, scores, values, state, mask, chunk_size):
    leaves = [t.detach().clone().requires_grad_() for t in (scores, values, *state)]
    outputs, final = softmax_scan(leaves[0], leaves[1], tuple(leaves[2:]), mask, chunk_size=chunk_size, backend=backend)
    generator = torch.Generator().manual_seed(2)
    real = mask[..., None, None]  # outputs at padded steps are unspecified: leave them out of the loss
    loss = (torch.where(real, outputs, 0) * torch.randn(outputs.shape, generator=generator, dtype=DOUBLE)).sum()
    for t in final:
        loss = loss + (t * torch.randn(t.shape, generator=generator, dtype=DOUBLE)).sum()
    grads = torch.autograd.grad(loss, leaves)
    return torch.where(real, outputs, 0).detach(), [t.detach() for t in final], grads


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("chunk_size", [1, 23, 24, 100], ids=lambda c: f"chunk{c}")
def test_chunk_sizes_of_one_and_beyond_the_length(backend, chunk_size):
    scores, values, state = make_inputs(steps=23, scale=5.0)
    mask = random_mask(*scores.shape[:2])
    got = with_gradients(backend, scores, values, state, mask, chunk_size)
    want = with_gradients("reference", scores, values, state, mask, chunk_size)
    torch.testing.assert_close(got[0], want[0], **TOL)
    for name, g, w in zip(("m", "c", "a"), got[1], want[1]):
        torch.testing.assert_close(g, w, **TOL, msg=lambda text, name=name: f"final {name}: {text}")
    for name, g, w in zip(("scores", "values", "m", "c", "a"), got[2], want[2]):
        torch.testing.assert_close(g, w, **TOL, msg=lambda text, name=name: f"gradient of {name}: {text}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("steps", [1, 2])
def test_one_and_two_tokens_on_the_backend_itself(backend, steps):
    """The operator runs T = 1 on the reference step whatever backend is named; the backends themselves must
    still handle it (and T = 2) through validated inputs."""
    scores, values, state = make_inputs(steps=steps, scale=5.0)
    args, kwargs = OPERATOR.validate(scores, values, state, None, 4)
    outputs, final = OPERATOR.implementation(backend)(*args, **kwargs)
    expected, expected_final = OPERATOR.implementation("reference")(*args, **kwargs)
    torch.testing.assert_close(outputs, expected, **TOL)
    for got, want in zip(final, expected_final):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("backend", ALL)
def test_rows_of_padding_only_from_the_empty_state(backend):
    """A row with no real token keeps the empty state (-inf, 0, 0): outputs and gradients stay finite (no
    exp(-inf - (-inf)) anywhere, backward included), its inputs get zero gradients, and the other row is as
    alone."""
    scores, values, _ = make_inputs(steps=11, scale=5.0)
    mask = torch.ones(2, 11, dtype=torch.bool, device=DEVICE)
    mask[1] = False
    scores, values = scores.requires_grad_(), values.requires_grad_()
    outputs, (m, c, a) = softmax_scan(scores, values, None, mask, chunk_size=4, backend=backend)
    assert torch.isfinite(outputs).all()
    assert m[1].eq(-math.inf).all() and c[1].eq(0).all() and a[1].eq(0).all()
    alone, alone_final = softmax_scan(scores[:1].detach(), values[:1].detach(), backend="reference")
    torch.testing.assert_close(outputs[:1].detach(), alone, **TOL)
    for got, want in zip((m, c, a), alone_final):
        torch.testing.assert_close(got[:1].detach(), want, **TOL)
    loss = (outputs * mask[..., None, None]).sum() + torch.where(m.isfinite(), m, 0).sum() + c.sum() + a.sum()
    grad_scores, grad_values = torch.autograd.grad(loss, (scores, values))
    assert torch.isfinite(grad_scores).all() and torch.isfinite(grad_values).all()
    assert grad_scores[1].eq(0).all() and grad_values[1].eq(0).all()


@pytest.mark.parametrize("m", [-1e30, 0.0, 1e4, math.inf, math.nan])
@pytest.mark.parametrize("backend", ALL)
def test_initial_state_with_zero_normaliser_is_empty_whatever_its_m(m, backend):
    scores, values, _ = make_inputs(steps=9, scale=5.0)
    state = (torch.full((2, 3), m, dtype=DOUBLE, device=DEVICE),) + empty_state(2, 3, 5, DOUBLE, DEVICE)[1:]
    outputs, final = softmax_scan(scores, values, state, backend=backend)
    expected, expected_final = softmax_scan(scores, values, None, backend="reference")
    torch.testing.assert_close(outputs, expected, **TOL)
    for got, want in zip(final, expected_final):
        torch.testing.assert_close(got, want, **TOL)
    zeros = tuple(torch.zeros_like(t) for t in state)  # a zero tensor is an empty state too
    torch.testing.assert_close(softmax_scan(scores, values, zeros, backend=backend)[0], expected, **TOL)


@pytest.mark.parametrize("with_state", [True, False], ids=["state", "empty"])
def test_softmax_scan_step_equals_the_scan_s_last_output(with_state):
    scores, values, state = make_inputs(steps=12, scale=5.0, with_state=with_state)
    outputs, final = softmax_scan(scores, values, state, backend="torch")
    _, prefix_state = softmax_scan(scores[:, :-1], values[:, :-1], state, backend="torch")
    step, step_state = softmax_scan_step(scores[:, -1], values[:, -1], prefix_state)
    torch.testing.assert_close(step, outputs[:, -1], **TOL)
    for got, want in zip(step_state, final):
        torch.testing.assert_close(got, want, **TOL)
    first, _ = softmax_scan_step(scores[:, 0], values[:, 0], state)
    torch.testing.assert_close(first, outputs[:, 0], **TOL)


def test_outputs_in_the_values_dtype_state_in_float32():
    scores, values, _ = make_inputs(steps=6, dtype=torch.bfloat16)
    outputs, final = softmax_scan(scores, values, backend="torch")
    assert outputs.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for t in final)


def test_triton_refuses_other_devices_or_dtypes_with_a_reason():
    from hf_seqplugins.kernels.softmax_scan import triton_impl

    scores, values, state = make_inputs(steps=3, dtype=torch.float32)
    half = tuple(t.half() for t in state)
    reason = triton_impl.unsupported_reason(scores.half(), values.half(), half, None, 8)
    if triton_impl.triton_device_reason(DEVICE, triton_impl.INTERPRETED, triton_impl.__name__) is None:
        assert "float16 for scores" in reason
    with pytest.raises(BackendUnavailableError, match="cannot run"):
        triton_impl.softmax_scan(scores.half(), values.half(), half, None, 8)


def bad_state(shape_of_m=(2, 3), parts=3, dtype=DOUBLE):
    state = (torch.zeros(shape_of_m, dtype=dtype), torch.zeros(2, 3, dtype=dtype), torch.zeros(2, 3, 5, dtype=dtype))
    return state[:parts]


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"scores": torch.zeros(2, 6)}, ValueError, "scores must be"),
        ({"scores": torch.zeros(2, 6, 3, dtype=torch.long)}, TypeError, "scores must be a floating"),
        ({"values": torch.zeros(2, 6, 3)}, ValueError, "values must be"),
        ({"values": torch.zeros(2, 6, 4, 5)}, ValueError, "values must be"),
        ({"values": torch.zeros(2, 6, 3, 5, dtype=torch.int32)}, TypeError, "values must be a floating"),
        ({"scores": torch.zeros(2, 0, 3), "values": torch.zeros(2, 0, 3, 5)}, ValueError, "T=0"),
        ({"mask": torch.ones(2, 5, dtype=torch.bool)}, ValueError, "mask must be"),
        ({"mask": torch.ones(2, 6)}, TypeError, "mask must be bool"),
        ({"initial_state": torch.zeros(2, 3)}, TypeError, "initial_state must be a tuple"),
        ({"initial_state": bad_state(parts=2)}, TypeError, "initial_state must be a tuple"),
        ({"initial_state": bad_state(shape_of_m=(2, 4))}, ValueError, "initial_state"),
        ({"initial_state": bad_state(dtype=torch.long)}, TypeError, "initial_state must be floating"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": 2.5}, ValueError, "chunk_size"),
    ],
)
def test_validation_names_the_argument(change, error, match):
    arguments = {
        "scores": torch.zeros(2, 6, 3, dtype=DOUBLE),
        "values": torch.zeros(2, 6, 3, 5, dtype=DOUBLE),
        "initial_state": None,
        "mask": None,
        "chunk_size": 4,
        **change,
    }
    with pytest.raises(error, match=match):
        softmax_scan(**arguments, backend="torch")


COMPILE_SCRIPT = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hf_seqplugins.kernels.softmax_scan import triton_impl

assert not triton_impl.INTERPRETED
kernel = triton_impl._scan_kernel
compiled_for = []
for capability in (80, 90):
    for dtype in ("fp32", "fp64"):
        for dim in (5, 64, 1000):  # a small, the benchmark's and the largest value block
            signature = {p.name: "constexpr" if p.is_constexpr else ("*" + dtype if p.name.endswith("_ptr") else "i32")
                         for p in kernel.params}
            source = ASTSource(fn=kernel, signature=signature, constexprs={"BD": triton_impl._block(dim)})
            compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
            assert compiled.asm["cubin"]
            compiled_for.append(f"sm_{capability} {dtype} D={dim}")
kernels = sorted(name for name in dir(triton_impl) if name.endswith("_kernel"))
print(json.dumps({"kernels": kernels, "compiled": compiled_for}))
"""


def test_kernel_compiles_for_sm80_and_sm90():
    """The interpreter does not run the GPU compiler: lower the kernel to cubin for sm_80 and sm_90 in float32 and
    float64 (no GPU needed), in a fresh interpreter without TRITON_INTERPRET."""
    pytest.importorskip("triton", reason="Triton is not installed (the triton extra); nothing to compile")
    result = run_compile_script(COMPILE_SCRIPT)
    assert result["kernels"] == ["_scan_kernel"], "a kernel is missing from the compile check"
    assert len(result["compiled"]) == 12
