"""The `triton` backend of `linear_scan` (chunked associative scan, `docs/architectures/pararnn.md`), what is
specific to it: against the `reference` step loop (states, final states and the gradients of a, b and the
initial state, through the operator) over several chunks, for m x m blocks (m = 1..4), in float32, tiles,
strides, unit-norm transitions, state passing over chunks, refusals, compilation for sm_80 / sm_90. The
generic contract checks (float64 against the reference with gradients, single steps, splits, left padding,
packed rows, poisoned buffers, bfloat16) live in the operator conformance kit
(tests/test_operator_conformance.py), whose length of 13 is one chunk here; a one-token call runs the
reference step whichever backend is named.

Without CUDA the kernel runs in Triton's interpreter (about 1 ms per program step), so sizes stay tiny and
the chunk is patched down to 8 steps (`MAX_CHUNK`): T = 70 is nine chunks, the last one ragged, in both the
forward and the reverse-time (adjoint) scan. Transitions have |a| <= 1 (diagonal) or spectral norm <= 1
(blocks), so products stay bounded.
Tolerances: float64 atol 1e-10 / rtol 1e-9 against the float64 reference (observed errors about 1e-15).
float32 against the float64 reference, relative to each tensor's largest magnitude: 2e-6 (observed
0.3e-7 to 2e-7).
A separate check compiles the kernel for sm_80 and sm_90 with `triton.compile` (no GPU needed): the
interpreter does not run the GPU compiler.
"""

import os
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    # Must precede the first import of the kernel module: triton.jit reads it when the kernels are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="Triton is in the `triton` extra (installed by the dev extra CI uses)")

from hf_seqplugins.core.backends import BackendUnavailableError
from hf_seqplugins.kernels.linear_scan import OPERATOR, linear_scan, triton_impl
from hf_seqplugins.testing.triton_compile import assert_fits_shared_memory, run_compile_script

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FLOAT64 = {"atol": 1e-10, "rtol": 1e-9}
FLOAT32_RELATIVE = 2e-6
NAMES = ("states", "final state", "grad of a", "grad of b", "grad of initial_state")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(triton_impl, "MAX_CHUNK", 8)


def make_inputs(batch=2, steps=70, channels=5, m=None, *, seed, dtype=torch.float64, with_state=True, norm=1.0):
    """Random (a, b, initial_state); m None for diagonal transitions, else m x m blocks. Diagonal a is uniform
    in [-norm, norm]; blocks are random matrices scaled to a spectral norm uniform in [norm / 2, norm]."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, steps, channels) if m is None else (batch, steps, channels, m)
    if m is None:
        a = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * norm
    else:
        a = torch.randn(*shape, m, generator=generator, dtype=torch.float64)
        scale = torch.rand(shape[:-1], generator=generator, dtype=torch.float64) * 0.5 + 0.5
        a = a * (norm * scale / torch.linalg.matrix_norm(a, ord=2).clamp_min(1e-12))[..., None, None]
    b = torch.randn(shape, generator=generator, dtype=torch.float64)
    state = torch.randn(batch, *shape[2:], generator=generator, dtype=torch.float64) if with_state else None
    return tuple(None if t is None else t.to(dtype) for t in (a, b, state))


def run(backend, inputs, seed=99, *, weights=(True, True)):
    """States, final state and the gradients of a fixed random weighted sum of them (`weights`: which of the
    two enter the loss), through the operator. Returns a dict by `NAMES`."""
    a, b, state = (None if t is None else t.to(DEVICE).detach().requires_grad_() for t in inputs)
    states, final = linear_scan(a, b, state, backend=backend)
    generator = torch.Generator().manual_seed(seed)
    loss = 0
    for use, tensor in zip(weights, (states, final)):
        weight = torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(DEVICE, tensor.dtype)
        if use:
            loss = loss + (tensor * weight).sum()
    leaves = [t for t in (a, b, state) if t is not None]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    return dict(zip(NAMES, (states.detach(), final.detach(), *grads)))


def assert_matches_reference(inputs, **options):
    """float64 inputs: the same inputs through the reference loop. float32 inputs: against the float64
    reference, each tensor within `FLOAT32_RELATIVE` of its largest magnitude. Returns the Triton results."""
    dtype = inputs[1].dtype
    got = run("triton", inputs, **options)
    assert got["states"].dtype == dtype and got["final state"].dtype == dtype
    expected = run("reference", tuple(None if t is None else t.double() for t in inputs), **options)
    assert got.keys() == expected.keys()
    for name, tensor in got.items():
        assert tensor.shape == expected[name].shape, name
        if dtype == torch.float64:
            torch.testing.assert_close(tensor, expected[name], **FLOAT64, msg=lambda m, name=name: f"{name}: {m}")
            continue
        scale = expected[name].abs().max()
        error = (tensor.double() - expected[name]).abs().max()
        assert error <= FLOAT32_RELATIVE * scale + 1e-12, f"{name}: error {error:.3g} for a scale of {scale:.3g}"
    return got


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("m", [None, 2])
def test_matches_reference_float64(m, with_state):
    assert_matches_reference(make_inputs(m=m, seed=0, with_state=with_state))


@pytest.mark.parametrize("m", [1, 3, 4])
def test_other_block_sizes_float64(m):
    # m = 1 blocks are `[B, T, D, 1, 1]`, not the diagonal layout; m = 3, 4 have more work per step: T = 20.
    assert_matches_reference(make_inputs(batch=1, steps=20, channels=3, m=m, seed=m))


@pytest.mark.parametrize("m", [None, 2])
def test_matches_reference_float32(m):
    assert_matches_reference(make_inputs(m=m, seed=1, dtype=torch.float32))


@pytest.mark.parametrize("weights", [(False, True), (True, False)])
def test_gradients_through_one_output_alone(weights):
    # The backward then gets None for the other output's gradient.
    assert_matches_reference(make_inputs(steps=19, m=2, seed=3), weights=weights)


@pytest.mark.parametrize("m", [None, 2])
def test_unit_norm_transitions_over_long_chunks_stay_bounded(m, monkeypatch):
    """|a| = 1 (signs, rotations): nothing decays, 130 steps in chunks of 64 (the default)."""
    monkeypatch.setattr(triton_impl, "MAX_CHUNK", 64)
    a, b, state = make_inputs(batch=1, steps=130, channels=3, m=m, seed=4)
    if m is None:
        a = torch.where(a < 0, -1.0, 1.0).double()
    else:
        angle = a[..., 0, 0] * 3.0
        a = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], -1).view(a.shape)
    got = assert_matches_reference((a, b, state))
    assert all(torch.isfinite(t).all() for t in got.values())


def test_several_channel_tiles(monkeypatch):
    # Tiles of 4 channels: D = 10 is two full tiles and a ragged one.
    monkeypatch.setattr(triton_impl, "MAX_CHANNEL_TILE", 4)
    assert_matches_reference(make_inputs(batch=2, steps=20, channels=10, m=2, seed=5))


def test_strided_and_expanded_inputs():
    """The kernel reads any strides: a shared over the batch (stride 0), b a transposed view."""
    a, b, state = make_inputs(batch=2, steps=21, channels=4, m=2, seed=6)
    a = a[:1].expand(2, *a.shape[1:])
    b = b.transpose(1, 2).contiguous().transpose(1, 2)
    assert a.stride(0) == 0 and not b.is_contiguous()
    assert_matches_reference((a, b, state))


@pytest.mark.parametrize("m", [None, 2])
def test_without_gradients_equals_the_differentiable_path(m):
    a, b, state = (t.to(DEVICE) for t in make_inputs(steps=17, m=m, seed=7))
    with torch.no_grad():
        plain = linear_scan(a, b, state, backend="triton")
    tracked = linear_scan(a.requires_grad_(), b, state, backend="triton")
    for got, expected in zip(tracked, plain):
        torch.testing.assert_close(got.detach(), expected, rtol=0, atol=0)


def test_state_passing_equals_one_pass():
    a, b, state = (t.to(DEVICE) for t in make_inputs(steps=30, m=2, seed=8))
    split = 13
    with torch.no_grad():
        states, final = linear_scan(a, b, state, backend="triton")
        first, middle = linear_scan(a[:, :split], b[:, :split], state, backend="triton")
        second, final2 = linear_scan(a[:, split:], b[:, split:], middle, backend="triton")
    torch.testing.assert_close(torch.cat([first, second], dim=1), states, **FLOAT64)
    torch.testing.assert_close(final2, final, **FLOAT64)


def test_no_channels_launch_nothing():
    a, b, state = (t.to(DEVICE) for t in make_inputs(steps=3, channels=0, m=2, seed=9))
    states, final = linear_scan(a, b, state, backend="triton")
    assert states.shape == b.shape and final.shape == state.shape


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 2),
    steps=st.integers(1, 40),
    channels=st.integers(1, 6),
    m=st.sampled_from([None, 1, 2, 3]),
    chunk=st.sampled_from([4, 8]),
    with_state=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_property_shapes_and_chunks(batch, steps, channels, m, chunk, with_state, seed):
    triton_impl.MAX_CHUNK = chunk  # the autouse fixture restores it after the test
    assert_matches_reference(make_inputs(batch, steps, channels, m, seed=seed, with_state=with_state))


def validated(m=None, dtype=torch.float32, **kwargs):
    a, b, state = make_inputs(steps=4, channels=2, m=m, seed=10, dtype=dtype, **kwargs)
    args, _ = OPERATOR.validate(a.to(DEVICE), b.to(DEVICE), None if state is None else state.to(DEVICE))
    return args


def test_refusals():
    assert triton_impl.unsupported_reason(*validated()) is None
    assert triton_impl.unsupported_reason(*validated(m=4)) is None
    assert triton_impl.unsupported_reason(*validated(m=2, dtype=torch.float64)) is None

    reason = triton_impl.unsupported_reason(*validated(m=5))
    assert "m = 5 exceeds 4" in reason
    with pytest.raises(BackendUnavailableError, match="m = 5 exceeds 4"):
        linear_scan(*make_inputs(steps=4, channels=2, m=5, seed=11), backend="triton")
    assert OPERATOR.resolve("auto", torch.device("cpu"), validated(m=5)) == "torch"

    a, b, state, blocks = validated()
    assert "float16 for a" in triton_impl.unsupported_reason(a.half(), b, state, blocks)
    assert "float16 for initial_state" in triton_impl.unsupported_reason(a, b, state.half(), blocks)
    assert "'meta'" in triton_impl.unsupported_reason(a.to("meta"), b.to("meta"), state.to("meta"), blocks)
    with pytest.raises(BackendUnavailableError, match="'meta'"):
        triton_impl.linear_scan(a.to("meta"), b.to("meta"), None, blocks)

    many = b[:1, :, :1].expand(2**31, *b.shape[1:2], 1)
    assert "exceed the launch grid's limit" in triton_impl.unsupported_reason(many, many, None, False)


def test_old_gpus_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    fake = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32, shape=(1, 4, 2))
    assert "compute capability 7.5 is below 8.0" in triton_impl.unsupported_reason(fake, fake, None, False)


def test_cpu_inputs_need_the_interpreter_from_the_first_import(monkeypatch):
    monkeypatch.setattr(triton_impl, "INTERPRETED", False)
    args = [t.cpu() if isinstance(t, torch.Tensor) else t for t in validated()]
    reason = triton_impl.unsupported_reason(*args)
    assert "TRITON_INTERPRET was not 1" in reason
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET was not 1"):
        triton_impl.linear_scan(*args)


COMPILE_SCRIPT = r"""
import json, sys
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hf_seqplugins.kernels.linear_scan import triton_impl

assert not triton_impl.INTERPRETED
capabilities, dtype, block_sizes = json.loads(sys.argv[1])
kernel = triton_impl._scan_kernel
torch_dtype = {"fp32": torch.float32, "fp64": torch.float64}[dtype]
# The forward (with and without an initial state) and the reverse-time adjoint scan, at the default tiles.
flags = [{"HAS_INIT": True, "REVERSE": False}, {"HAS_INIT": False, "REVERSE": False},
         {"HAS_INIT": True, "REVERSE": True}]
shared = {}
for capability in capabilities:
    for m in block_sizes:
        chunk, block = triton_impl._tiles(m, 10**6, 10**6, torch_dtype)
        for flag in flags:
            signature = {p.name: "constexpr" if p.is_constexpr else ("*" + dtype if p.name.endswith("_ptr") else "i32")
                         for p in kernel.params}
            values = {"M": m, "BT": chunk, "BD": block, **flag}
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=values),
                                      target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
            assert compiled.asm["cubin"]
            shared[f"sm_{capability} m={m} {flag}"] = compiled.metadata.shared
kernels = sorted(name for name in dir(triton_impl) if name.endswith("_kernel"))
print(json.dumps({"kernels": kernels, "shared": shared}))
"""


def compile_for_gpus(capabilities, dtype, block_sizes):
    """Compiles the kernel variants the wrapper launches for each capability, in a fresh interpreter without
    TRITON_INTERPRET."""
    result = run_compile_script(COMPILE_SCRIPT, [capabilities, dtype, block_sizes])
    assert result["kernels"] == ["_scan_kernel"], "a kernel is missing from the compile check"
    assert len(result["shared"]) == 3 * len(capabilities) * len(block_sizes)
    assert_fits_shared_memory(result["shared"])


def test_kernels_compile_for_sm80_and_sm90():
    """The PTX lowering and ptxas run for real GPU targets: diagonal and 2 x 2 blocks in float32."""
    compile_for_gpus([80, 90], "fp32", [1, 2])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_kernels_compile_for_every_block_size(dtype):
    compile_for_gpus([80, 90], dtype, [1, 2, 3, 4])
