"""The `triton` backend of `ssd` (Mamba-2's chunked SSD kernels), what is specific to it: against the
`reference` step loop (outputs, final states, gradients of every input) over several chunks and intra-chunk
blocks, tiles and random shapes, strong, -inf and positive decays, padding across a chunk, state passing over
chunks, half precision, refusals, compilation for sm_80 / sm_90. The generic contract checks (float64 against
the reference with gradients, chunk sizes, single steps, splits, left padding, packed rows, poisoned buffers,
bfloat16) live in the operator conformance kit (tests/test_operator_conformance.py), whose length of 13 is
one chunk of 16 here.

Without CUDA the kernels run in Triton's interpreter (about 1 ms per program step), so sizes stay tiny;
`block_intra=16` with chunks of 32 makes every chunk two blocks, so both tiling levels run.
Tolerances: float64 atol 1e-10 / rtol 1e-9 against the float64 reference (observed errors about 1e-14).
float32 against the float64 reference, relative to each tensor's scale (see `assert_matches_reference`):
2e-5 (observed about 1e-6).
A separate check compiles every kernel for sm_80 and sm_90 with `triton.compile` (no GPU needed):
the interpreter does not run the GPU compiler.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    # Must precede the first import of the kernel module: triton.jit reads it when the kernels are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="Triton is in the `triton` extra (installed by the dev extra CI uses)")

from hf_seqplugins.core.backends import BackendUnavailableError
from hf_seqplugins.kernels.ssd import OPERATOR, reference, ssd, triton_impl
from hf_seqplugins.testing.triton_compile import assert_fits_shared_memory, run_compile_script

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCES = {torch.float32: {"atol": 1e-5, "rtol": 1e-4}, torch.float64: {"atol": 1e-10, "rtol": 1e-9}}
FLOAT32_RELATIVE = 2e-5
GRAD_NAMES = ("x", "dt", "log_decay", "B", "C", "initial_state")


def make_inputs(
    batch=1,
    steps=40,
    heads=2,
    groups=1,
    head_dim=8,
    state_size=16,
    *,
    seed,
    dtype=torch.float64,
    with_state=True,
    decay_scale=1.0,
    dt_scale=1.0,
):
    """Random (x, dt, log_decay, B, C, initial_state): dt = softplus(normal) * dt_scale and
    log_decay = -dt * A with A uniform in (0, decay_scale), as Mamba-2 forms them."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    dt = F.softplus(randn(batch, steps, heads)) * dt_scale
    log_decay = -dt * torch.rand(batch, steps, heads, generator=generator, dtype=dtype) * decay_scale
    state = randn(batch, heads, head_dim, state_size) if with_state else None
    return (
        randn(batch, steps, heads, head_dim),
        dt,
        log_decay,
        randn(batch, steps, groups, state_size),
        randn(batch, steps, groups, state_size),
        state,
    )


def run(kernel, inputs, mask=None, chunk_size=32, seed=99, **kwargs):
    """y, final state and the gradients (by name) of a fixed random weighted sum of both, through the
    operator's validation (so `kernel` gets exactly what a backend gets)."""
    *tensors, state = inputs
    leaves = [t.to(DEVICE).requires_grad_() for t in (*tensors, *([] if state is None else [state]))]
    initial = None if state is None else leaves[5]
    args, _ = OPERATOR.validate(*leaves[:5], initial, None if mask is None else mask.to(DEVICE), chunk_size)
    y, final_state = kernel(*args, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    loss = sum(
        (t * torch.randn(t.shape, generator=generator, dtype=torch.float64).to(DEVICE, t.dtype)).sum()
        for t in (y, final_state)
    )
    grads = torch.autograd.grad(loss, leaves)
    return y.detach(), final_state.detach(), dict(zip(GRAD_NAMES, grads))


def triton_kernel(*args, block_intra=16):
    return triton_impl.ssd(*args, block_intra=block_intra)


def named_results(result):
    y, state, grads = result
    return {"y": y, "final state": state, **{f"grad of {name}": g for name, g in grads.items()}}


def assert_matches_reference(inputs, mask=None, *, relative=None, **options):
    """float64 inputs: the same inputs through the reference loop. float32 inputs: against the float64
    reference (the float32 reference loop rounds about as much as the kernels), each tensor within
    `relative` (default `FLOAT32_RELATIVE`) of its scale: its largest magnitude or, for the gradient
    of log_decay, which the kernels get from reverse sums of `dy_t . y_t - X_t . dX_t`, the largest
    sum of those magnitudes."""
    dtype = inputs[0].dtype
    got = run(triton_kernel, inputs, mask, **options)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    as_float64 = tuple(None if t is None else t.double() for t in inputs)
    expected_result = run(reference.ssd, as_float64, mask, **options)
    expected = named_results(expected_result)
    relative = FLOAT32_RELATIVE if relative is None else relative
    for name, tensor in named_results(got).items():
        if dtype == torch.float64:
            torch.testing.assert_close(
                tensor, expected[name], **TOLERANCES[dtype], msg=lambda m, name=name: f"{name}: {m}"
            )
            continue
        scale = expected[name].abs().max()
        if name == "grad of log_decay":
            # The weight of y in `run`'s loss, and X_t . dX_t = x_t . grad_x_t.
            d_y = torch.randn(got[0].shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64).to(DEVICE)
            terms = (d_y * expected["y"]).sum(-1).abs() + (as_float64[0].to(DEVICE) * expected["grad of x"]).sum(
                -1
            ).abs()
            scale = torch.maximum(scale, terms.sum(1).max())
        error = (tensor.double() - expected[name]).abs().max()
        assert error <= relative * scale + 1e-7, f"{name}: error {error:.3g} for a scale of {scale:.3g}"
    return got


def attention_form(x, dt, log_decay, B, C, initial_state):
    """The SSD recurrence's masked-attention form (`docs/architectures/mamba2.md`, section 'SSD recurrence'),
    independent of any recurrence: `y_t = sum_{s<=t} (C_t . B_s)
    exp(sum_{s<r<=t} a_r) dt_s x_s + exp(sum_{r<=t} a_r) h_0 C_t` (float64, tiny sizes only)."""
    heads, groups = x.shape[2], B.shape[2]
    B, C = (t.repeat_interleave(heads // groups, dim=2) for t in (B, C))
    steps = x.shape[1]
    y = torch.zeros_like(x)
    for t in range(steps):
        for s in range(t + 1):
            weight = torch.exp(log_decay[:, s + 1 : t + 1].sum(1)) * (C[:, t] * B[:, s]).sum(-1) * dt[:, s]
            y[:, t] += weight[..., None] * x[:, s]
        y[:, t] += torch.exp(log_decay[:, : t + 1].sum(1))[..., None] * torch.einsum(
            "bhpn,bhn->bhp", initial_state, C[:, t]
        )
    return y


def test_reference_agrees_with_the_attention_form():
    """The ground truth itself, checked once against a formula that shares no code with it."""
    x, dt, log_decay, B, C, state = make_inputs(steps=9, heads=2, groups=2, head_dim=3, state_size=4, seed=12)
    y, _ = reference.ssd(x, dt, log_decay, B, C, state, None, 4)
    torch.testing.assert_close(y, attention_form(x, dt, log_decay, B, C, state), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups, with_state", [(1, True), (1, False), (2, True)])
def test_matches_reference_float64(groups, with_state):
    # T = 40: two chunks of 32 in blocks of 16, the second mostly end padding.
    assert_matches_reference(make_inputs(seed=0, groups=groups, with_state=with_state))


def test_matches_reference_float32():
    inputs = make_inputs(batch=2, steps=24, heads=2, groups=2, head_dim=16, state_size=8, seed=1, dtype=torch.float32)
    assert_matches_reference(inputs, chunk_size=16)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    steps=st.integers(1, 48),
    chunk_size=st.sampled_from([16, 32]),
    heads_groups=st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2)]),
    head_dim=st.integers(1, 20),
    state_size=st.integers(1, 20),
    with_state=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_property_shapes_and_chunks(steps, chunk_size, heads_groups, head_dim, state_size, with_state, seed):
    heads, groups = heads_groups
    inputs = make_inputs(
        steps=steps,
        heads=heads,
        groups=groups,
        head_dim=head_dim,
        state_size=state_size,
        seed=seed,
        with_state=with_state,
        decay_scale=3.0,
    )
    assert_matches_reference(inputs, chunk_size=chunk_size)


def test_single_step():
    assert_matches_reference(make_inputs(steps=1, seed=2))


def test_several_head_dim_tiles(monkeypatch):
    # Tiles of 16: P = 32 is two full tiles, N = 20 one full and one mostly masked tile.
    monkeypatch.setattr(triton_impl, "MAX_TILE_FLOAT64", 16)
    assert_matches_reference(make_inputs(heads=1, steps=20, head_dim=32, state_size=20, seed=3), chunk_size=16)


def test_gradients_through_the_final_state_alone():
    *tensors, state = (t.to(DEVICE) for t in make_inputs(heads=1, steps=20, seed=4))
    grads = []
    for kernel in (reference.ssd, triton_kernel):
        leaves = [t.detach().requires_grad_() for t in (*tensors, state)]
        _, final = kernel(*leaves, None, 16)
        loss = (final * torch.arange(final.numel(), dtype=final.dtype, device=DEVICE).view(final.shape)).sum()
        grads.append(torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True))
    assert (grads[1][4] == 0).all(), "C does not reach the final state"
    for name, got, expected in zip(GRAD_NAMES, grads[1], grads[0]):
        torch.testing.assert_close(
            got, expected, **TOLERANCES[torch.float64], msg=lambda msg, name=name: f"{name}: {msg}"
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_strong_decays_and_large_steps_stay_finite(dtype):
    # dt up to about 100 and log decays down to about -1000 per step: states reset within a step or two.
    inputs = make_inputs(heads=1, steps=40, seed=5, dtype=dtype, dt_scale=30.0, decay_scale=10.0)
    y, state, grads = assert_matches_reference(inputs)
    assert inputs[2].min() < -200
    assert (
        torch.isfinite(y).all() and torch.isfinite(state).all() and all(torch.isfinite(g).all() for g in grads.values())
    )


def test_decays_keep_their_relative_accuracy_in_float32():
    """A step with log decay -500 early in the chunk, then mild ones: in-chunk decays computed as
    differences of prefix sums (about -500 each) would lose about 3e-5 of relative accuracy in float32;
    the kernels sum the log decays between the two steps directly."""
    x, dt, log_decay, B, C, _ = make_inputs(heads=1, steps=32, seed=6, dtype=torch.float32)
    log_decay = log_decay * 0.01
    log_decay[:, 1] = -500.0
    assert_matches_reference((x, dt, log_decay, B, C, None), relative=2e-6)


@pytest.mark.parametrize("kind", ["-inf (a state reset)", "positive"])
def test_log_decays_of_any_sign(kind):
    x, dt, log_decay, B, C, state = make_inputs(steps=40, seed=15)
    if kind == "positive":
        log_decay = log_decay * 0.5 + 0.2
        assert log_decay.max() > 0
    else:
        log_decay[:, 5, 0] = log_decay[:, 30, 1] = -math.inf
    assert_matches_reference((x, dt, log_decay, B, C, state))


def test_padding_equals_the_unpadded_row():
    """Row 0 has 18 leading padding steps (the whole first chunk of 16 and more) and a gap; row 1 none.
    Padded steps are identities with y = 0: the kept steps' outputs and the final state equal those of
    row 0 with its padding removed, run alone."""
    steps, lead = 28, 18
    inputs = make_inputs(batch=2, heads=2, steps=steps, seed=7, with_state=False)
    mask = torch.ones(2, steps, dtype=torch.bool)
    mask[0, :lead] = False
    mask[0, 23] = False
    y, state, grads = assert_matches_reference(inputs, mask, chunk_size=16)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert (y[0, ~mask[0]] == 0).all()
    assert all((grads[name][0, ~mask[0]] == 0).all() for name in ("x", "dt", "log_decay", "B", "C"))

    keep = mask[0]
    alone = tuple(t[:1, keep] for t in inputs[:5])
    with torch.no_grad():
        y_alone, state_alone = triton_kernel(*(t.to(DEVICE) for t in alone), None, None, 16)
    torch.testing.assert_close(y[0, keep], y_alone[0], **TOLERANCES[torch.float64])
    torch.testing.assert_close(state[0], state_alone[0], **TOLERANCES[torch.float64])


def test_mask_given_directly_is_folded_like_the_operator_does():
    tensors = [t.to(DEVICE) for t in make_inputs(batch=2, heads=1, steps=20, seed=8, with_state=False)[:5]]
    mask = torch.ones(2, 20, dtype=torch.bool, device=DEVICE)
    mask[1, :7] = False
    with torch.no_grad():
        direct = triton_kernel(*tensors, None, mask, 16)
        folded = ssd(*tensors, mask=mask, chunk_size=16, backend="triton")
    for got, expected in zip(direct, folded):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_state_passing_equals_one_pass():
    *tensors, state = (t.to(DEVICE) for t in make_inputs(heads=2, steps=36, seed=9))
    split = 21
    options = {"chunk_size": 16, "backend": "triton"}
    with torch.no_grad():
        y, final = ssd(*tensors, state, **options)
        y1, middle = ssd(*(t[:, :split] for t in tensors), state, **options)
        y2, final2 = ssd(*(t[:, split:] for t in tensors), middle, **options)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, **TOLERANCES[torch.float64])
    torch.testing.assert_close(final2, final, **TOLERANCES[torch.float64])


def test_matches_the_torch_backend_through_the_operator():
    *tensors, state = (t.to(DEVICE) for t in make_inputs(batch=2, heads=2, groups=2, steps=30, seed=10))
    with torch.no_grad():
        got = ssd(*tensors, state, chunk_size=16, backend="triton")
        expected = ssd(*tensors, state, chunk_size=16, backend="torch")
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **TOLERANCES[torch.float64])


def test_half_precision_inputs_compute_in_float32():
    x, dt, log_decay, B, C, _ = make_inputs(heads=2, steps=16, seed=11, dtype=torch.float32)
    args = [t.to(DEVICE) for t in (x.bfloat16(), dt, log_decay, B.bfloat16(), C.bfloat16())]
    with torch.no_grad():
        y, final = ssd(*args, chunk_size=16, backend="triton")
        expected_y, expected_final = ssd(*args, chunk_size=16, backend="reference")
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    torch.testing.assert_close(y, expected_y, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(final, expected_final, **TOLERANCES[torch.float32])


def test_refusals():
    tensors = [t.to(DEVICE) for t in make_inputs(heads=1, steps=4, seed=13, dtype=torch.float32, with_state=False)[:5]]
    assert triton_impl.unsupported_reason(*tensors, None, None, 64) is None

    assert "'meta'" in triton_impl.unsupported_reason(*(t.to("meta") for t in tensors), None, None, 64)
    x, dt, log_decay, B, C = tensors
    assert "complex64 for x" in triton_impl.unsupported_reason(
        x.to(torch.complex64), dt, log_decay, B, C, None, None, 64
    )
    for name, index in (("x", 0), ("B", 3)):
        empty = list(tensors)
        empty[index] = empty[index][..., :0]
        assert "empty inputs" in triton_impl.unsupported_reason(*empty, None, None, 64), name
    many_heads = [t.expand(65536, *t.shape[1:]) for t in tensors]
    assert "65535" in triton_impl.unsupported_reason(*many_heads, None, None, 64)
    with pytest.raises(BackendUnavailableError, match="'meta'"):
        triton_impl.ssd(*(t.to("meta") for t in tensors), None, None, 64)
    with pytest.raises(ValueError, match="block_intra"):
        triton_impl.ssd(*tensors, None, None, 32, block_intra=24)


def test_cpu_inputs_need_the_interpreter_from_the_first_import(monkeypatch):
    monkeypatch.setattr(triton_impl, "INTERPRETED", False)
    tensors = make_inputs(heads=1, steps=4, seed=14, dtype=torch.float32, with_state=False)[:5]
    reason = triton_impl.unsupported_reason(*tensors, None, None, 64)
    assert "TRITON_INTERPRET was not 1" in reason
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET was not 1"):
        triton_impl.ssd(*tensors, None, None, 64)


COMPILE_SCRIPT = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hf_seqplugins.kernels.ssd import triton_impl

assert not triton_impl.INTERPRETED
capabilities, dtype, (chunk, block, tile) = json.loads(sys.argv[1])
tiles = {"L": chunk, "BT": block, "BP": tile, "BN": tile, "BK": tile, "BO": tile, "BLOCK": triton_impl.MAX_STATE_BLOCK}
variants = {
    "_chunk_state_kernel": [{}],
    "_state_passing_kernel": [{"REVERSE": False}, {"REVERSE": True}],
    # The launches of the forward (y) and backward (dC, dX, dB) scans.
    "_scan_kernel": [{"REVERSE": False, "SCALE_KEYS": True, "SCALE_OUT": False},
                     {"REVERSE": True, "SCALE_KEYS": False, "SCALE_OUT": False},
                     {"REVERSE": True, "SCALE_KEYS": False, "SCALE_OUT": True}],
}
shared = {}
for capability in capabilities:
    for name, flags in variants.items():
        kernel = getattr(triton_impl, name)
        for flag in flags:
            signature = {p.name: "constexpr" if p.is_constexpr else ("*" + dtype if p.name.endswith("_ptr") else "i32")
                         for p in kernel.params}
            values = {p.name: {**tiles, **flag}[p.name] for p in kernel.params if p.is_constexpr}
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=values),
                                      target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
            assert compiled.asm["cubin"], name
            shared[f"sm_{capability} {name} {flag}"] = compiled.metadata.shared
kernels = sorted(name for name in dir(triton_impl) if name.endswith("_kernel"))
print(json.dumps({"kernels": kernels, "compiled": sorted(variants), "shared": shared}))
"""


def compile_for_gpus(capabilities, dtype, tiles):
    """Compiles every kernel variant the wrapper launches for each capability, in a fresh interpreter
    without TRITON_INTERPRET."""
    result = run_compile_script(COMPILE_SCRIPT, [capabilities, dtype, tiles])
    assert result["kernels"] == result["compiled"], "a kernel is missing from the compile check"
    assert_fits_shared_memory(result["shared"])
    return result


def test_kernels_compile_for_sm80_and_sm90():
    """The PTX lowering and ptxas run for real GPU targets; small tiles keep it to a few seconds."""
    compile_for_gpus([80, 90], "fp32", (32, 16, 16))


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tiles", [("fp32", (256, 64, 64)), ("fp64", (128, 32, 32))])
def test_kernels_compile_with_production_tiles(dtype, tiles):
    """The default tiles: float32 chunks of 256 with 64-wide tiles, float64 with 32-wide ones, within shared memory."""
    compile_for_gpus([80, 90], dtype, tiles)


@pytest.mark.slow
@pytest.mark.parametrize(
    "steps, chunk_size, block_intra, head_dim, state_size, groups",
    [(100, 64, 16, 16, 48, 1), (130, 128, 32, 40, 16, 2), (64, 16, 16, 80, 16, 2)],
)
def test_matches_reference_wider(steps, chunk_size, block_intra, head_dim, state_size, groups):
    inputs = make_inputs(
        batch=2,
        heads=2,
        groups=groups,
        steps=steps,
        head_dim=head_dim,
        state_size=state_size,
        seed=steps + head_dim,
        decay_scale=3.0,
    )
    expected = named_results(run(reference.ssd, inputs, chunk_size=chunk_size))
    got = named_results(run(triton_kernel, inputs, chunk_size=chunk_size, block_intra=block_intra))
    for name, tensor in got.items():
        torch.testing.assert_close(
            tensor, expected[name], **TOLERANCES[torch.float64], msg=lambda m, name=name: f"{name}: {m}"
        )
