"""The Triton SSM-kernel generators (`lti_ssm.triton_impl`: S4D Vandermonde, S4 Cauchy) called directly,
against the plain-PyTorch `generators`: outputs and the gradients of every differentiable input. The `triton`
backend's generic contract checks through the operator live in the operator conformance kit
(tests/test_operator_conformance.py).

Without CUDA the kernels run in Triton's interpreter (about 1 ms per program step), so sizes stay tiny.
Every accuracy check runs twice: with the default blocks (one ragged block per dimension at these sizes)
and with blocks of 2 to 8 (`small_blocks`), so rows, steps, nodes and modes span several blocks and
end in a partial one.
Tolerances: complex128 atol 1e-10 / rtol 1e-9 against the complex128 reference (observed about 1e-13).
complex64 against the complex128 reference on the same (rounded) inputs, relative to each tensor's
largest entry: 2e-5, or 10 times the complex64 reference's own error where a cancelling sum makes that
larger (observed in the interpreter: mostly below 5e-7, at most 1.0e-5 for a one-entry gradient whose
complex64 reference is 1.2e-5 off; on a GPU float32 `exp` is `ex2.approx`, a few 1e-7 more).
A separate check compiles every kernel for sm_80 and sm_90 with `triton.compile` (no GPU needed):
the interpreter does not run the GPU compiler.
"""

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    # Must precede the first import of the kernel module: triton.jit reads it when the kernels are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="Triton is in the `triton` extra (installed by the dev extra CI uses)")

from hf_seqplugins.core.backends import BackendUnavailableError
from hf_seqplugins.kernels.lti_ssm import generators, triton_impl
from hf_seqplugins.testing.triton_compile import assert_fits_shared_memory, run_compile_script

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FLOAT64_TOLERANCE = {"atol": 1e-10, "rtol": 1e-9}
FLOAT32_RELATIVE = 2e-5
BASELINE_FACTOR = 10
SMALL_BLOCKS = {
    "VANDERMONDE_BLOCK_ROWS": 2,
    "VANDERMONDE_BLOCK_STEPS": 8,
    "CAUCHY_BLOCK_ROWS": 4,
    "CAUCHY_BLOCK_NODES": 4,
    "BACKWARD_BLOCK_MODES": 2,
    "BACKWARD_BLOCK_STEPS": {torch.float32: 4, torch.float64: 8},
}
DEFAULT_BLOCKS = {name: getattr(triton_impl, name) for name in SMALL_BLOCKS}


@pytest.fixture(params=["default_blocks", "small_blocks"])
def blocks(request, monkeypatch):
    if request.param == "small_blocks":
        for name, value in SMALL_BLOCKS.items():
            monkeypatch.setattr(triton_impl, name, value)
    return request.param


def vandermonde_inputs(rows, modes, *, seed):
    """Complex128 (v, log_a): log_a with real part in [-0.5, 0.05] (a few slightly growing modes, as the
    contract allows) and imaginary part in [-3, 3]."""
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(rows, modes, generator=generator, dtype=torch.complex128)
    real = torch.rand(rows, modes, generator=generator, dtype=torch.float64) * 0.55 - 0.5
    imag = (torch.rand(rows, modes, generator=generator, dtype=torch.float64) * 2 - 1) * 3
    return v, torch.complex(real, imag)


def s4_nodes(count):
    """S4's bilinear nodes `z_k = 2 (1 - w_k) / (1 + w_k)`, `w_k = exp(-2 pi i k / L)` for L = 2 (count - 1),
    computed in float64: z_0 = 0 and the last (Nyquist) node is about 1e16 i."""
    steps = 2 * (count - 1) if count > 1 else 1
    omega = torch.exp(-2j * math.pi * torch.arange(count, dtype=torch.float64) / steps)
    return 2 * (1 - omega) / (1 + omega)


def cauchy_inputs(rows, modes, nodes, *, seed, s4=True):
    """Complex128 (v, z, w): w like S4's dt * Lambda (real part < 0, imaginary part up to about pi n dt),
    z S4's nodes or random complex points."""
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(rows, modes, generator=generator, dtype=torch.complex128)
    dt = torch.rand(rows, 1, generator=generator, dtype=torch.float64) * 0.2 + 0.01
    real = -0.5 * dt.expand(rows, modes)
    imag = math.pi * torch.arange(modes, dtype=torch.float64) * dt
    w = torch.complex(real, imag + torch.randn(rows, modes, generator=generator, dtype=torch.float64) * 0.1)
    z = s4_nodes(nodes) if s4 else torch.randn(nodes, generator=generator, dtype=torch.complex128)
    return v, z, w


def evaluate(function, inputs, differentiable, *, seed):
    """(output, gradients of the differentiable inputs) for a fixed random real weighting of the output's
    real and imaginary parts."""
    leaves = [
        t.detach().to(DEVICE).requires_grad_(i in differentiable) if torch.is_tensor(t) else t
        for i, t in enumerate(inputs)
    ]
    out = function(*leaves)
    generator = torch.Generator().manual_seed(seed)
    parts = (out.real, out.imag) if out.is_complex() else (out,)
    loss = sum((p * torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p)).sum() for p in parts)
    grads = torch.autograd.grad(loss, [leaves[i] for i in differentiable])
    return [out.detach().cpu(), *(g.cpu() for g in grads)]


def check(function, reference, inputs, differentiable, *, seed=7):
    """complex128 against the reference at FLOAT64_TOLERANCE; complex64 against the complex128 reference
    on the rounded inputs, relative to scale, within FLOAT32_RELATIVE or BASELINE_FACTOR times the error
    of the complex64 reference (a sum that cancels, e.g. a one-entry gradient, loses digits in both)."""
    expected = evaluate(reference, inputs, differentiable, seed=seed)
    got = evaluate(function, inputs, differentiable, seed=seed)
    for index, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, **FLOAT64_TOLERANCE, msg=lambda m, i=index: f"complex128 result {i}: {m}")
    rounded = [t.to(torch.complex64) if torch.is_tensor(t) else t for t in inputs]
    expected = evaluate(
        reference, [t.to(torch.complex128) if torch.is_tensor(t) else t for t in rounded], differentiable, seed=seed
    )
    got = evaluate(function, rounded, differentiable, seed=seed)
    baseline = evaluate(reference, rounded, differentiable, seed=seed)
    for index, (g, e, b) in enumerate(zip(got, expected, baseline)):
        assert g.dtype == (torch.complex64 if e.dtype == torch.complex128 else torch.float32)
        error = ((g.to(e.dtype) - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()
        baseline_error = ((b.to(e.dtype) - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()
        assert error <= max(FLOAT32_RELATIVE, BASELINE_FACTOR * baseline_error), (
            f"complex64 result {index}: relative error {error:.2e} (complex64 reference: {baseline_error:.2e})"
        )


@pytest.mark.parametrize("rows, modes, length", [(5, 3, 37), (3, 8, 5), (1, 1, 1)])
def test_vandermonde_matches_generators(blocks, rows, modes, length):
    inputs = vandermonde_inputs(rows, modes, seed=rows * 100 + length)
    check(triton_impl.vandermonde, generators.vandermonde, [*inputs, length], (0, 1))


@pytest.mark.parametrize("rows, modes, nodes, s4", [(5, 3, 11, True), (6, 4, 20, False), (1, 1, 3, True)])
def test_cauchy_matches_generators(blocks, rows, modes, nodes, s4):
    inputs = cauchy_inputs(rows, modes, nodes, seed=rows * 100 + nodes, s4=s4)
    check(triton_impl.cauchy, generators.cauchy, inputs, (0, 2))


@settings(max_examples=6, deadline=None)
@given(
    rows=st.integers(1, 6),
    modes=st.integers(1, 6),
    length=st.integers(1, 40),
    nodes=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_generators_match_over_shapes(rows, modes, length, nodes, seed):
    for name, value in SMALL_BLOCKS.items():  # several blocks per dimension whatever the shape
        setattr(triton_impl, name, value)
    try:
        check(
            triton_impl.vandermonde,
            generators.vandermonde,
            [*vandermonde_inputs(rows, modes, seed=seed), length],
            (0, 1),
            seed=seed,
        )
        check(
            triton_impl.cauchy,
            generators.cauchy,
            cauchy_inputs(rows, modes, nodes, seed=seed, s4=seed % 2 == 0),
            (0, 2),
            seed=seed,
        )
    finally:
        for name in SMALL_BLOCKS:
            setattr(triton_impl, name, DEFAULT_BLOCKS[name])


def test_gradcheck():
    """torch's numerical Jacobians (complex inputs, Wirtinger conventions) agree with the kernels' backward."""
    v, log_a = (t.to(DEVICE).requires_grad_() for t in vandermonde_inputs(2, 2, seed=3))
    assert torch.autograd.gradcheck(lambda v, x: triton_impl.vandermonde(v, x, 6), (v, log_a))
    v, z, w = cauchy_inputs(2, 2, 3, seed=4, s4=False)
    v, w = (t.to(DEVICE).requires_grad_() for t in (v, w))
    assert torch.autograd.gradcheck(lambda v, w: triton_impl.cauchy(v, z.to(DEVICE), w), (v, w))


@pytest.mark.parametrize("rows, modes, length", [(0, 3, 4), (2, 0, 4), (2, 3, 0)])
def test_empty_sizes(rows, modes, length):
    v, log_a = (t.to(DEVICE).requires_grad_() for t in vandermonde_inputs(rows, modes, seed=1))
    out = triton_impl.vandermonde(v, log_a, length)
    assert out.shape == (rows, length)
    assert not out.any()
    grads = torch.autograd.grad(out.sum(), (v, log_a), allow_unused=True)
    assert all(g is None or not g.any() for g in grads)
    v, z, w = cauchy_inputs(rows, modes, length, seed=1)
    out = triton_impl.cauchy(v.to(DEVICE), z.to(DEVICE), w.to(DEVICE))
    assert out.shape == (rows, length) and out.dtype == torch.complex128 and not out.any()


def test_dtypes_and_promotion():
    v, log_a = vandermonde_inputs(2, 3, seed=2)
    v, log_a = v.to(DEVICE), log_a.to(DEVICE)
    assert triton_impl.vandermonde(v.to(torch.complex64), log_a.to(torch.complex64), 4).dtype == torch.float32
    mixed = triton_impl.vandermonde(v.to(torch.complex64), log_a, 4)
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(mixed, generators.vandermonde(v.to(torch.complex64).to(torch.complex128), log_a, 4))
    v, z, w = (t.to(DEVICE) for t in cauchy_inputs(2, 3, 4, seed=2))
    assert triton_impl.cauchy(*(t.to(torch.complex64) for t in (v, z, w))).dtype == torch.complex64


def test_invalid_inputs_are_refused():
    v, log_a = (t.to(DEVICE) for t in vandermonde_inputs(2, 3, seed=5))
    with pytest.raises(ValueError, match="one shape"):
        triton_impl.vandermonde(v, log_a[:, :2], 4)
    with pytest.raises(TypeError, match="complex"):
        triton_impl.vandermonde(v, torch.ones(2, 3, dtype=torch.int64, device=DEVICE), 4)
    v, z, w = (t.to(DEVICE) for t in cauchy_inputs(2, 3, 4, seed=5))
    with pytest.raises(ValueError, match="no gradient to the nodes"):
        triton_impl.cauchy(v, z.requires_grad_(), w)
    with torch.no_grad():
        triton_impl.cauchy(v, z, w)


def test_cpu_inputs_need_the_interpreter_from_the_first_import(monkeypatch):
    monkeypatch.setattr(triton_impl, "INTERPRETED", False)
    reason = triton_impl.generator_unsupported_reason(torch.device("cpu"))
    assert "TRITON_INTERPRET was not 1" in reason
    v, log_a = vandermonde_inputs(2, 3, seed=6)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET was not 1"):
        triton_impl.vandermonde(v, log_a, 4)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET was not 1"):
        triton_impl.cauchy(*cauchy_inputs(2, 3, 4, seed=6))
    assert "not on 'meta'" in triton_impl.generator_unsupported_reason(torch.device("meta"))


def test_interpreted_cpu_is_supported(monkeypatch):
    monkeypatch.setattr(triton_impl, "INTERPRETED", True)
    assert triton_impl.generator_unsupported_reason(torch.device("cpu")) is None


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="S4-sized inputs are too slow for the interpreter")
def test_s4_sizes_on_gpu():
    check(triton_impl.vandermonde, generators.vandermonde, [*vandermonde_inputs(64, 32, seed=8), 1000], (0, 1))
    check(triton_impl.cauchy, generators.cauchy, cauchy_inputs(64, 32, 513, seed=9), (0, 2))


COMPILE_SCRIPT = r"""
import json, sys
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hf_seqplugins.kernels.lti_ssm import triton_impl

assert not triton_impl.INTERPRETED
capabilities, dtypes = json.loads(sys.argv[1])
forward_rows = {"_vandermonde_kernel": triton_impl.VANDERMONDE_BLOCK_ROWS,
                "_cauchy_kernel": triton_impl.CAUCHY_BLOCK_ROWS}
shared = {}
for capability in capabilities:
    for dtype in dtypes:
        backward_steps = triton_impl.BACKWARD_BLOCK_STEPS[{"fp32": torch.float32, "fp64": torch.float64}[dtype]]
        tiles = {
            "_vandermonde_kernel": {"BR": triton_impl.VANDERMONDE_BLOCK_ROWS,
                                    "BL": triton_impl.VANDERMONDE_BLOCK_STEPS},
            "_vandermonde_backward_kernel": {"BN": triton_impl.BACKWARD_BLOCK_MODES, "BL": backward_steps},
            "_cauchy_kernel": {"BR": triton_impl.CAUCHY_BLOCK_ROWS, "BK": triton_impl.CAUCHY_BLOCK_NODES},
            "_cauchy_backward_kernel": {"BN": triton_impl.BACKWARD_BLOCK_MODES, "BK": backward_steps},
        }
        for name, values in tiles.items():
            kernel = getattr(triton_impl, name)
            signature = {p.name: "constexpr" if p.is_constexpr else ("*" + dtype if p.name.endswith("_ptr") else "i32")
                         for p in kernel.params}
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=values),
                                      target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
            assert compiled.asm["cubin"], name
            shared[f"sm_{capability} {dtype} {name}"] = compiled.metadata.shared
kernels = sorted(name for name in dir(triton_impl) if name.endswith("_kernel"))
print(json.dumps({"kernels": kernels, "compiled": sorted(tiles), "shared": shared}))
"""


def test_kernels_compile_for_sm80_and_sm90():
    """The PTX lowering and ptxas run for real GPU targets with the default blocks, in float32 and float64,
    in a fresh interpreter without TRITON_INTERPRET."""
    result = run_compile_script(COMPILE_SCRIPT, [[80, 90], ["fp32", "fp64"]])
    assert result["kernels"] == result["compiled"], "a kernel is missing from the compile check"
    assert_fits_shared_memory(result["shared"])
