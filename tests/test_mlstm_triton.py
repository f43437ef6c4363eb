"""The `triton` backend of `mlstm` (TFLA-style kernels), what is specific to it: against the `reference`
step loop (outputs, final states, gradients of every input, both input gates) over several chunks and query
blocks, tiles and random shapes, eps = 0, large gates, padding across a chunk, state passing over chunks,
half precision, refusals, compilation for sm_80 / sm_90. The generic contract checks (float64 against the
reference with gradients, chunk sizes, single steps, splits, left padding, packed rows, poisoned buffers,
bfloat16) live in the operator conformance kit (tests/test_operator_conformance.py), whose length of 13 is
one chunk of 16 here.

Without CUDA the kernels run in Triton's interpreter (about 1 ms per program step), so sizes stay tiny;
`block_intra=16` with chunks of 32 makes every chunk two query blocks, so both tiling levels run.
Tolerances: float64 atol 1e-10 / rtol 1e-9 against the float64 reference (observed relative errors
about 1e-14). float32 against the float64 reference, relative to each tensor's scale (see
`assert_matches_reference`): 2e-5 (observed 4e-6 at unit gate scale), 1e-3 for pre-activations up
to +-90 (observed 1.4e-4 for dq; the float32 reference loop is off by 8e-4 there).
Inputs are built in the operator's public layout (q, k `[B, T, NH, DK]`, v `[B, T, NH, DV]`, gates
`[B, T, NH]`, h `[B, T, NH, DV]`); direct calls of the kernels take the heads-first `[B, NH, T, ...]`
layout the operator's validation hands them (`heads_first`).
A separate check compiles every kernel for sm_80 and sm_90 with `triton.compile` (no GPU needed):
the interpreter does not run the GPU compiler.
"""

import math
import os
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    # Must precede the first import of the kernel module: triton.jit reads it when the kernels are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="Triton is in the `triton` extra (installed by the dev extra CI uses)")

from hf_seqplugins.core.backends import BackendUnavailableError  # noqa: E402
from hf_seqplugins.kernels.mlstm import OPERATOR, mlstm, reference, triton_impl  # noqa: E402
from hf_seqplugins.testing.triton_compile import assert_fits_shared_memory, run_compile_script

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCES = {torch.float32: {"atol": 1e-5, "rtol": 1e-4}, torch.float64: {"atol": 1e-10, "rtol": 1e-9}}
FLOAT32_RELATIVE = 2e-5
GRAD_NAMES = ("q", "k", "v", "igate", "fgate", "C0", "n0", "m0")


def make_inputs(
    batch=1, heads=2, steps=40, dk=16, dv=32, *, seed, dtype=torch.float64, with_state=True, gate_scale=1.0
):
    """Random (q, k, v, igate, fgate, initial_state) in the public layout; forget gates lean open, as trained models'
    do."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    state = (randn(batch, heads, dk, dv), randn(batch, heads, dk), randn(batch, heads)) if with_state else None
    return (
        randn(batch, steps, heads, dk),
        randn(batch, steps, heads, dk),
        randn(batch, steps, heads, dv),
        randn(batch, steps, heads) * gate_scale,
        randn(batch, steps, heads) * gate_scale + 2.0,
        state,
    )


def heads_first(tensors):
    """Public `[B, T, NH, ...]` sequences in the kernels' `[B, NH, T, ...]` layout."""
    return [t.transpose(1, 2) for t in tensors]


def run(kernel, inputs, mask=None, input_gate="exp", normalize=True, eps=1e-6, chunk_size=32, seed=99, **kwargs):
    """h (public layout), final state and the gradients (by name) of a fixed random weighted sum of both,
    through the operator's validation (so `kernel` gets exactly what a backend gets)."""
    q, k, v, igate, fgate, state = inputs
    leaves = [t.to(DEVICE).requires_grad_() for t in (q, k, v, igate, fgate, *(state or ()))]
    initial = None if state is None else tuple(leaves[5:])
    args, _ = OPERATOR.validate(
        *leaves[:5], initial, None if mask is None else mask.to(DEVICE), input_gate, normalize, eps, chunk_size
    )
    h, final_state = kernel(*args, **kwargs)
    h = h.transpose(1, 2)
    generator = torch.Generator().manual_seed(seed)
    loss = sum(
        (t * torch.randn(t.shape, generator=generator, dtype=torch.float64).to(DEVICE, t.dtype)).sum()
        for t in (h, *final_state)
    )
    grads = torch.autograd.grad(loss, leaves)
    return h.detach(), tuple(s.detach() for s in final_state), dict(zip(GRAD_NAMES, grads))


def triton_kernel(*args, block_intra=16):
    return triton_impl.mlstm(*args, block_intra=block_intra)


def named_results(result):
    h, state, grads = result
    return {
        "h": h,
        **{f"final {name}": s for name, s in zip("Cnm", state)},
        **{f"grad of {name}": g for name, g in grads.items()},
    }


def assert_matches_reference(inputs, mask=None, **options):
    """float64 inputs: the same inputs through the reference loop. float32 inputs: against the float64
    reference (the float32 reference loop rounds about as much as the kernels), each tensor within
    `FLOAT32_RELATIVE` of its scale: its largest magnitude or, for the gate gradients, which the
    kernels get from reverse sums of `q_t . dq_t - k_t . dk_t`, the largest sum of those magnitudes."""
    dtype = inputs[0].dtype
    got = run(triton_kernel, inputs, mask, **options)
    assert got[0].dtype == dtype and all(s.dtype == dtype for s in got[1])
    as_float64 = tuple(
        None if t is None else t.double() if isinstance(t, torch.Tensor) else tuple(s.double() for s in t)
        for t in inputs
    )
    expected_result = run(reference.mlstm, as_float64, mask, **options)
    expected = named_results(expected_result)
    q, k = (t.to(DEVICE) for t in as_float64[:2])
    gate_scale = (
        ((q * expected_result[2]["q"]).sum(-1).abs() + (k * expected_result[2]["k"]).sum(-1).abs()).sum(1).max()
    )
    for name, tensor in named_results(got).items():
        if dtype == torch.float64:
            torch.testing.assert_close(
                tensor, expected[name], **TOLERANCES[dtype], msg=lambda m, name=name: f"{name}: {m}"
            )
        else:
            scale = expected[name].abs().max()
            if name in ("grad of igate", "grad of fgate"):
                scale = torch.maximum(scale, gate_scale)
            error = (tensor.double() - expected[name]).abs().max()
            assert error <= FLOAT32_RELATIVE * scale + 1e-7, f"{name}: error {error:.3g} for a scale of {scale:.3g}"
    return got


@pytest.mark.parametrize(
    "input_gate, normalize, with_state",
    [("exp", True, True), ("exp", True, False), ("sigmoid", True, True), ("sigmoid", False, False)],
)
def test_matches_reference_float64(input_gate, normalize, with_state):
    # T = 40: two chunks of 32, the second mostly end padding.
    inputs = make_inputs(seed=0, with_state=with_state)
    assert_matches_reference(inputs, input_gate=input_gate, normalize=normalize)


def test_matches_reference_float32():
    assert_matches_reference(make_inputs(batch=2, heads=1, steps=24, seed=1, dtype=torch.float32), chunk_size=16)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    input_gate=st.sampled_from(["exp", "sigmoid"]),
    steps=st.integers(1, 48),
    chunk_size=st.sampled_from([16, 32]),
    dk=st.integers(1, 20),
    dv=st.integers(1, 20),
    with_state=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_property_shapes_and_chunks(input_gate, steps, chunk_size, dk, dv, with_state, seed):
    inputs = make_inputs(heads=1, steps=steps, dk=dk, dv=dv, seed=seed, with_state=with_state, gate_scale=3.0)
    assert_matches_reference(inputs, input_gate=input_gate, chunk_size=chunk_size)


def test_single_step():
    assert_matches_reference(make_inputs(heads=1, steps=1, seed=2))


def test_several_head_dim_tiles(monkeypatch):
    # Head tiles of 16: DK = 32 is two full tiles, DV = 20 one full and one mostly masked tile.
    monkeypatch.setattr(triton_impl, "MAX_TILE_FLOAT64", 16)
    assert_matches_reference(make_inputs(heads=1, steps=20, dk=32, dv=20, seed=3), chunk_size=16)


def test_eps_zero_and_a_gradient_only_through_the_final_state():
    inputs = make_inputs(heads=1, steps=20, seed=4)
    assert_matches_reference(inputs, eps=0.0)
    q, k, v, igate, fgate = (t.to(DEVICE) for t in heads_first(inputs[:5]))
    leaves = [t.to(DEVICE).requires_grad_() for t in (igate, fgate, *inputs[5])]
    grads = []
    for kernel in (reference.mlstm, triton_kernel):
        _, (c, n, m) = kernel(q, k, v, *leaves[:2], tuple(leaves[2:]), None, "exp", True, 1e-6, 16)
        grads.append(torch.autograd.grad(c.sum() + 2 * n.sum() + 3 * m.sum(), leaves))
    for name, got, expected in zip(("igate", "fgate", "C0", "n0", "m0"), grads[1], grads[0]):
        torch.testing.assert_close(
            got, expected, **TOLERANCES[torch.float64], msg=lambda msg, name=name: f"{name}: {msg}"
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_large_gate_preactivations_stay_finite(dtype, monkeypatch):
    # Pre-activations up to about +-90: in float32 the prefix-sum decays b_j - b_l (|b| up to about 1000
    # in a chunk) lose about 1e-4 of relative accuracy, the float32 reference loop 8e-4.
    monkeypatch.setattr(sys.modules[__name__], "FLOAT32_RELATIVE", 1e-3)
    inputs = make_inputs(heads=1, steps=40, seed=5, gate_scale=30.0, dtype=dtype)
    h, (c, n, m), grads = assert_matches_reference(inputs)
    assert torch.isfinite(h).all() and torch.isfinite(c).all() and all(torch.isfinite(g).all() for g in grads.values())
    assert m.abs().max() > 20, "the stabiliser m should track the large gate pre-activations"


@pytest.mark.parametrize("input_gate", ["exp", "sigmoid"])
def test_padding_equals_the_unpadded_row(input_gate):
    """Row 0 has 18 leading padding steps (the whole first chunk of 16 and more) and a gap; row 1 none.
    Padded steps are identities: the kept steps' outputs and the final state equal those of row 0
    with its padding removed, run alone."""
    steps, lead = 28, 18
    inputs = make_inputs(batch=2, heads=1, steps=steps, seed=6, with_state=False)
    mask = torch.ones(2, steps, dtype=torch.bool)
    mask[0, :lead] = False
    mask[0, 23] = False
    h, state, grads = assert_matches_reference(inputs, mask, input_gate=input_gate, chunk_size=16)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert (h[0, ~mask[0]] == 0).all()
    # The operator's folding hides whatever the kernel returns for the padded gates: ask for them directly.
    args, _ = OPERATOR.validate(*(t.to(DEVICE) for t in inputs[:5]), None, mask.to(DEVICE), input_gate, True, 1e-6, 16)
    folded_gates = [gate.detach().requires_grad_() for gate in args[3:5]]
    h_folded, state_folded = triton_kernel(*args[:3], *folded_gates, *args[5:])
    gate_grads = torch.autograd.grad(
        h_folded.sum() + sum(s.sum() for s in state_folded), folded_gates, allow_unused=True
    )
    assert all(torch.isfinite(g).all() for g in gate_grads)
    assert (gate_grads[0][0, :, ~mask[0]] == 0).all() and (gate_grads[1][0, :, ~mask[0]] == 0).all()

    keep = mask[0]
    alone = tuple(t[:1, keep] for t in inputs[:5])
    with torch.no_grad():
        args, _ = OPERATOR.validate(*(t.to(DEVICE) for t in alone), None, None, input_gate, True, 1e-6, 16)
        h_alone, state_alone = triton_kernel(*args)
    torch.testing.assert_close(h[0, keep], h_alone[0].transpose(0, 1), **TOLERANCES[torch.float64])
    for got, expected in zip(state, state_alone):
        torch.testing.assert_close(got[0], expected[0], **TOLERANCES[torch.float64])


def test_mask_given_directly_is_folded_like_the_operator_does():
    tensors = [t.to(DEVICE) for t in make_inputs(batch=2, heads=1, steps=20, seed=7, with_state=False)[:5]]
    mask = torch.ones(2, 20, dtype=torch.bool, device=DEVICE)
    mask[1, :7] = False
    with torch.no_grad():
        direct = triton_kernel(*heads_first(tensors), None, mask, "exp", True, 1e-6, 16)
        folded = mlstm(*tensors, mask=mask, chunk_size=16, backend="triton")
    torch.testing.assert_close(direct[0].transpose(1, 2), folded[0], rtol=0, atol=0)
    for got, expected in zip(direct[1], folded[1]):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("input_gate", ["exp", "sigmoid"])
def test_state_passing_equals_one_pass(input_gate):
    *tensors, state = make_inputs(heads=1, steps=36, seed=8)
    tensors, state = [t.to(DEVICE) for t in tensors], tuple(s.to(DEVICE) for s in state)
    split = 21
    options = {"input_gate": input_gate, "chunk_size": 16, "backend": "triton"}
    with torch.no_grad():
        h, final = mlstm(*tensors, state, **options)
        h1, middle = mlstm(*(t[:, :split] for t in tensors), state, **options)
        h2, final2 = mlstm(*(t[:, split:] for t in tensors), middle, **options)
    torch.testing.assert_close(torch.cat([h1, h2], dim=1), h, **TOLERANCES[torch.float64])
    for got, expected in zip(final2, final):
        torch.testing.assert_close(got, expected, **TOLERANCES[torch.float64])


def test_half_precision_inputs_compute_in_float32():
    q, k, v, igate, fgate, state = make_inputs(heads=1, steps=16, seed=9, dtype=torch.float32)
    args = [t.to(DEVICE) for t in (q.bfloat16(), k.bfloat16(), v.bfloat16(), igate, fgate)]
    with torch.no_grad():
        h, final = mlstm(*args, chunk_size=16, backend="triton")
        expected_h, expected_final = mlstm(*args, chunk_size=16, backend="reference")
    assert h.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in final)
    torch.testing.assert_close(h, expected_h, atol=1e-2, rtol=1e-2)
    for got, expected in zip(final, expected_final):
        torch.testing.assert_close(got, expected, **TOLERANCES[torch.float32])


def test_refusals():
    tensors = heads_first(
        t.to(DEVICE) for t in make_inputs(heads=1, steps=4, seed=10, dtype=torch.float32, with_state=False)[:5]
    )
    options = [None, None, "exp", True, 1e-6, 64]
    assert triton_impl.unsupported_reason(*tensors, *options) is None

    q, k, v, igate, fgate = tensors
    closed_gate = fgate.clone()
    closed_gate[0, 0, 2] = -math.inf
    assert "-inf" in triton_impl.unsupported_reason(q, k, v, igate, closed_gate, *options)
    with pytest.raises(BackendUnavailableError, match="fgate contains -inf"):
        mlstm(*(t.transpose(1, 2) for t in (q, k, v, igate, closed_gate)), backend="triton")  # public layout again

    assert "'meta'" in triton_impl.unsupported_reason(*(t.to("meta") for t in tensors), *options)
    assert "float32" in triton_impl.unsupported_reason(q.to(torch.complex64), k, v, igate, fgate, *options)
    many_heads = [t.expand(65536, *t.shape[1:]) for t in tensors]
    assert "65535" in triton_impl.unsupported_reason(*many_heads, *options)
    with pytest.raises(ValueError, match="block_intra"):
        triton_impl.mlstm(*tensors, *options[:5], 32, block_intra=24)


def test_cpu_inputs_need_the_interpreter_from_the_first_import(monkeypatch):
    monkeypatch.setattr(triton_impl, "INTERPRETED", False)
    tensors = heads_first(make_inputs(heads=1, steps=4, seed=11, dtype=torch.float32, with_state=False)[:5])
    reason = triton_impl.unsupported_reason(*tensors, None, None, "exp", True, 1e-6, 64)
    assert "TRITON_INTERPRET was not 1" in reason
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET was not 1"):
        triton_impl.mlstm(*tensors, None, None, "exp", True, 1e-6, 64)


COMPILE_SCRIPT = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hf_seqplugins.kernels.mlstm import triton_impl

assert not triton_impl.INTERPRETED
capabilities, dtype, (chunk, block, head_tile) = json.loads(sys.argv[1])
constants = {"L": chunk, "BT": block, "BDK": head_tile, "BDV": head_tile, "NORMALIZE": True}
scalars = {"scale": "fp32", "eps": "fp32"}
kernels = [getattr(triton_impl, name) for name in dir(triton_impl)
           if name.startswith(("_fw_", "_bw_")) and name.endswith("_kernel")]
shared = {}
for capability in capabilities:
    for sigmoid in (False, True):
        for kernel in kernels:
            signature = {p.name: "constexpr" if p.is_constexpr
                         else ("*" + dtype if p.name.endswith("_ptr") else scalars.get(p.name, "i32"))
                         for p in kernel.params}
            values = {p.name: sigmoid if p.name == "SIGMOID" else constants[p.name]
                      for p in kernel.params if p.is_constexpr}
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=values),
                                      target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
            assert compiled.asm["cubin"], kernel.__name__
            shared[f"sm_{capability} {kernel.__name__} sigmoid={sigmoid}"] = compiled.metadata.shared
print(json.dumps({"kernels": len(kernels), "shared": shared}))
"""


def compile_for_gpus(capabilities, dtype, tiles):
    """Compiles every kernel, both gates, for each capability in a fresh interpreter without TRITON_INTERPRET."""
    result = run_compile_script(COMPILE_SCRIPT, [capabilities, dtype, tiles])
    assert result["kernels"] == 6
    assert_fits_shared_memory(result["shared"])
    return result


def test_kernels_compile_for_sm80_and_sm90():
    """The PTX lowering and ptxas run for real GPU targets; small tiles keep it to a few seconds."""
    compile_for_gpus([80, 90], "fp32", (32, 16, 16))


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tiles", [("fp32", (128, 64, 64)), ("fp64", (64, 32, 32))])
def test_kernels_compile_with_production_tiles(dtype, tiles):
    """The default tiles: float32 chunks of 128 with 64-wide tiles, float64 with 32-wide ones, within shared memory."""
    compile_for_gpus([80, 90], dtype, tiles)


@pytest.mark.slow
@pytest.mark.parametrize("input_gate", ["exp", "sigmoid"])
@pytest.mark.parametrize(
    "steps, chunk_size, block_intra, dk, dv", [(100, 64, 16, 16, 48), (130, 128, 32, 40, 16), (64, 16, 16, 80, 16)]
)
def test_matches_reference_wider(input_gate, steps, chunk_size, block_intra, dk, dv):
    inputs = make_inputs(batch=2, heads=1, steps=steps, dk=dk, dv=dv, seed=steps + dk, gate_scale=3.0)
    expected = run(reference.mlstm, inputs, input_gate=input_gate, chunk_size=chunk_size)
    got = run(
        lambda *args: triton_impl.mlstm(*args, block_intra=block_intra),
        inputs,
        input_gate=input_gate,
        chunk_size=chunk_size,
    )
    torch.testing.assert_close(got[0], expected[0], **TOLERANCES[torch.float64])
    for got_state, expected_state in zip(got[1], expected[1]):
        torch.testing.assert_close(got_state, expected_state, **TOLERANCES[torch.float64])
    for name, grad in got[2].items():
        torch.testing.assert_close(
            grad, expected[2][name], **TOLERANCES[torch.float64], msg=lambda m, name=name: f"grad of {name}: {m}"
        )
