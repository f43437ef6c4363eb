"""The SSD operator (Mamba-2), what is specific to it: the chunked form against the step loop with gradients
across chunks, tiny shapes and strong decays, random shapes and chunk sizes, chunks of 1 and of the whole
length, right padding and rows of padding only, `ssd_step`, a long sequence, half precision, validation, and
parity with transformers' `mamba2_chunk_scan`. The generic contract checks (every backend and example case
against the reference in float64 with gradients, chunk sizes 2, 5, 16, single steps, splits, left padding,
packed rows, poisoned buffers, bfloat16) live in the operator conformance kit
(tests/test_operator_conformance.py).

Tolerances: float64 comparisons of our backends use atol 1e-10 / rtol 1e-8 (measured differences are
about 1e-15); the float32 checks (long sequence, transformers peer) and the half-precision checks
state their own.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_seqplugins.core.backends import BackendUnavailableError
from hf_seqplugins.kernels.ssd import OPERATOR, ssd, ssd_step, state_shape

DOUBLE = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-8}
NAMES = ("x", "dt", "log_decay", "B", "C")


def make_inputs(
    batch=2,
    steps=19,
    heads=4,
    head_dim=3,
    groups=2,
    state_size=5,
    seed=0,
    with_state=True,
    dtype=DOUBLE,
    grad=True,
    dt_shift=-1.0,
    dt_scale=1.0,
    a_max=4.0,
):
    """Random inputs as Mamba-2 makes them: dt = softplus(.), log_decay = dt·A with A = -U[1, a_max],
    plus a small offset of either sign (log_decay is not required to be <= 0)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=DOUBLE)

    dt = F.softplus(randn(batch, steps, heads) * dt_scale + dt_shift)
    A = -(1 + (a_max - 1) * torch.rand(heads, generator=g, dtype=DOUBLE))
    inputs = {
        "x": randn(batch, steps, heads, head_dim),
        "dt": dt,
        "log_decay": dt * A + 0.1 * randn(batch, steps, heads),
        "B": randn(batch, steps, groups, state_size),
        "C": randn(batch, steps, groups, state_size),
        "initial_state": randn(*state_shape(batch, heads, head_dim, state_size)) if with_state else None,
    }
    return {name: None if t is None else t.to(dtype).requires_grad_(grad) for name, t in inputs.items()}


def leaves(inputs):
    return [inputs[name] for name in (*NAMES, "initial_state") if inputs[name] is not None]


def run_with_grads(inputs, backend, mask=None, chunk_size=4):
    y, state = ssd(**inputs, mask=mask, chunk_size=chunk_size, backend=backend)
    weights = torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)
    loss = (y * weights).sum() + (state * 0.3).sum()
    return y, state, torch.autograd.grad(loss, leaves(inputs))


def assert_same(actual, expected, **tol):
    tol = tol or TOL
    for a, e in zip(actual[:2], expected[:2]):
        torch.testing.assert_close(a, e, **tol)
    assert len(actual[2]) == len(expected[2])
    for a, e in zip(actual[2], expected[2]):
        torch.testing.assert_close(a, e, **tol)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("chunk_size", [1, 4, 16])
def test_torch_equals_reference_float64(chunk_size, groups, with_state):
    """T=19 is a multiple of none of the chunk sizes; values and gradients of every input."""
    inputs = make_inputs(groups=groups, with_state=with_state, seed=chunk_size + groups)
    assert_same(run_with_grads(inputs, "torch", chunk_size=chunk_size), run_with_grads(inputs, "reference"))


def test_tiny_shapes_and_strong_decays_float64():
    for shape in [(1, 1, 1, 1, 1, 1), (1, 1, 2, 1, 2, 1), (2, 5, 3, 2, 1, 3)]:
        inputs = make_inputs(*shape, seed=sum(shape))
        assert_same(run_with_grads(inputs, "torch", chunk_size=2), run_with_grads(inputs, "reference"))
    strong = make_inputs(steps=24, dt_shift=3.0, dt_scale=3.0, a_max=16.0, seed=4)
    assert strong["log_decay"].min() < -100
    assert_same(run_with_grads(strong, "torch", chunk_size=8), run_with_grads(strong, "reference"))


def test_output_independent_of_chunk_size():
    inputs = make_inputs(steps=21, grad=False, seed=9)
    y1, state1 = ssd(**inputs, chunk_size=1, backend="torch")
    for chunk_size in (2, 3, 4, 7, 16, 21, 64):
        y, state = ssd(**inputs, chunk_size=chunk_size, backend="torch")
        torch.testing.assert_close(y, y1, **TOL)
        torch.testing.assert_close(state, state1, **TOL)


def padded_batch(row, pad):
    """Three rows holding `row` (tensors [1, T, ...]): left padded, right padded, and padding only;
    the padded slots carry large garbage (and an inf in x, which must not leak)."""
    g = torch.Generator().manual_seed(7)
    steps = row["x"].shape[1]
    out = {}
    for name in NAMES:
        t = row[name].detach()
        junk = torch.randn((3, steps + pad, *t.shape[2:]), generator=g, dtype=t.dtype) * 50
        junk[0:1, pad:] = t
        junk[1:2, :steps] = t
        out[name] = junk
    out["x"][2, 0] = float("inf")
    out = {name: t.requires_grad_() for name, t in out.items()}
    mask = torch.zeros(3, steps + pad, dtype=torch.bool)
    mask[0, pad:] = True
    mask[1, :steps] = True
    state = row["initial_state"]
    out["initial_state"] = (
        None if state is None else state.detach().expand(3, *state.shape[1:]).clone().requires_grad_()
    )
    return out, mask


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_padded_rows_equal_the_row_alone(with_state, backend):
    row = make_inputs(batch=1, steps=6, with_state=with_state, seed=11)
    alone_y, alone_state = ssd(**row, backend="reference")
    batch, mask = padded_batch(row, pad=5)
    y, state, grads = run_with_grads(batch, backend, mask=mask, chunk_size=4)
    torch.testing.assert_close(y[0:1, 5:], alone_y, **TOL)
    torch.testing.assert_close(y[1:2, :6], alone_y, **TOL)
    assert torch.count_nonzero(y[0, :5]) == torch.count_nonzero(y[1, 6:]) == torch.count_nonzero(y[2]) == 0
    torch.testing.assert_close(state[0:1], alone_state, **TOL)
    torch.testing.assert_close(state[1:2], alone_state, **TOL)
    initial = batch["initial_state"] if with_state else torch.zeros_like(state)
    torch.testing.assert_close(state[2], initial[2].detach(), atol=0, rtol=0)
    assert all(torch.isfinite(g).all() for g in grads)
    for name, g in zip(NAMES, grads):
        assert torch.count_nonzero(g[0, :5]) == torch.count_nonzero(g[1, 6:]) == torch.count_nonzero(g[2]) == 0, name


def test_step_loop_equals_reference():
    inputs = make_inputs(steps=7, grad=False)
    expected_y, expected_state = ssd(**inputs, backend="reference")
    state = inputs["initial_state"]
    outputs = []
    for t in range(7):
        y, state = ssd_step(*(inputs[name][:, t] for name in NAMES), state)
        outputs.append(y)
    torch.testing.assert_close(torch.stack(outputs, dim=1), expected_y, **TOL)
    torch.testing.assert_close(state, expected_state, **TOL)


def test_prefill_then_steps_equal_one_pass():
    """What generation does: the chunked prefill's final state feeds the decoding steps."""
    inputs = make_inputs(steps=10, grad=False, seed=3)
    expected_y, expected_state = ssd(**inputs, backend="torch", chunk_size=4)
    y, state = ssd(
        **{name: inputs[name][:, :7] for name in NAMES},
        initial_state=inputs["initial_state"],
        backend="torch",
        chunk_size=4,
    )
    outputs = [y]
    for t in range(7, 10):
        y_t, state = ssd_step(*(inputs[name][:, t] for name in NAMES), state)
        outputs.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected_y, **TOL)
    torch.testing.assert_close(state, expected_state, **TOL)


def test_step_from_no_state_and_half_precision():
    inputs = make_inputs(batch=1, steps=1, grad=False, with_state=False)
    step_args = [inputs[name][:, 0] for name in NAMES]
    y, state = ssd_step(*step_args, None)
    expected_y, expected_state = ssd(**inputs, backend="reference")
    torch.testing.assert_close(y, expected_y[:, 0], **TOL)
    torch.testing.assert_close(state, expected_state, **TOL)
    y16, state16 = ssd_step(*(t.to(torch.bfloat16) for t in step_args), None)
    assert y16.dtype == torch.bfloat16 and state16.dtype == torch.float32
    torch.testing.assert_close(y16.double(), y, atol=5e-2, rtol=5e-2)


def test_long_sequence_with_strong_decays_and_large_dt():
    """T=8192, dt = softplus(N(1, 3²)) (up to ~15), A in [-16, -1] (log-decays down to about -200),
    with stretches of tiny dt where the state builds up over hundreds of steps: the float32 chunked
    form stays finite and matches the float64 step loop within 1e-6 of the output (and state) scale
    (measured: about 1e-7; taking the chunk-state decays as differences of cumulative sums, as
    transformers' scan does, gives about 4e-6 and fails); the float64 chunked form matches within
    1e-10; the float32 backward is finite."""
    inputs = make_inputs(
        batch=1,
        steps=8192,
        heads=2,
        head_dim=4,
        groups=1,
        state_size=4,
        dt_shift=1.0,
        dt_scale=3.0,
        a_max=16.0,
        seed=5,
        grad=False,
    )
    slow = torch.arange(8192) % 2048 < 512
    inputs["dt"][:, slow] *= 1e-3
    inputs["log_decay"][:, slow] *= 1e-3
    assert inputs["dt"].max() > 10 and inputs["log_decay"].min() < -150
    expected_y, expected_state = ssd(**inputs, backend="reference")
    y, state = ssd(**inputs, backend="torch", chunk_size=64)
    torch.testing.assert_close(y, expected_y, **TOL)
    torch.testing.assert_close(state, expected_state, **TOL)

    single = {name: t.float().requires_grad_() for name, t in inputs.items()}
    y, state = ssd(**single, backend="torch", chunk_size=64)
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    torch.testing.assert_close(y.double(), expected_y, atol=1e-6 * expected_y.abs().max().item(), rtol=0)
    torch.testing.assert_close(state.double(), expected_state, atol=1e-6 * expected_state.abs().max().item(), rtol=0)
    (y.square().mean() + state.square().mean()).backward()
    assert all(torch.isfinite(t.grad).all() for t in single.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["reference", "torch", "transformers"])
def test_half_precision_inputs(dtype, backend):
    """Half-precision inputs: y in that dtype, the state in float32, both finite and within 5e-2 of
    the float32 step loop on the same (rounded) inputs."""
    inputs = make_inputs(steps=10, dtype=dtype, grad=False)
    expected_y, expected_state = ssd(**{name: t.float() for name, t in inputs.items()}, backend="reference")
    y, state = ssd(**inputs, backend=backend, chunk_size=4)
    assert y.dtype == dtype and state.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    torch.testing.assert_close(y.float(), expected_y, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(state, expected_state, atol=1e-4, rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 2),
    steps=st.integers(1, 12),
    heads_groups=st.sampled_from([(1, 1), (2, 1), (2, 2), (3, 1), (4, 2), (3, 3)]),
    head_dim=st.integers(1, 3),
    state_size=st.integers(1, 4),
    chunk_size=st.integers(1, 9),
    with_state=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_torch_backend_property(batch, steps, heads_groups, head_dim, state_size, chunk_size, with_state, seed):
    heads, groups = heads_groups
    inputs = make_inputs(batch, steps, heads, head_dim, groups, state_size, seed=seed, with_state=with_state)
    assert_same(run_with_grads(inputs, "torch", chunk_size=chunk_size), run_with_grads(inputs, "reference"))


def test_auto_backend_on_cpu_is_torch():
    args, kwargs = OPERATOR.validate(*make_inputs(grad=False).values())
    assert OPERATOR.resolve(None, torch.device("cpu"), args, kwargs) == "torch"


@pytest.mark.parametrize("with_state", [False, True])
def test_transformers_peer_equals_reference(with_state):
    """transformers' `mamba2_chunk_scan` (float32 inside) against our float64 step loop: values and
    gradients of every input within 1e-5 relative to each tensor's scale (measured: about 1e-7)."""
    inputs = make_inputs(steps=19, with_state=with_state, seed=2)
    expected = run_with_grads(inputs, "reference")
    single = {name: None if t is None else t.detach().float().requires_grad_() for name, t in inputs.items()}
    for chunk_size in (4, 16, 64):
        actual = run_with_grads(single, "transformers", chunk_size=chunk_size)
        assert actual[0].dtype == actual[1].dtype == torch.float32
        for a, e in zip((*actual[:2], *actual[2]), (*expected[:2], *expected[2])):
            torch.testing.assert_close(a.double(), e, atol=1e-5 * e.abs().max().item(), rtol=0)


def test_transformers_peer_refuses_float64_and_pads_correctly():
    inputs = make_inputs(steps=8, grad=False)
    with pytest.raises(BackendUnavailableError, match="float64"):
        ssd(**inputs, backend="transformers")
    row = make_inputs(batch=1, steps=6, seed=11, dtype=torch.float32, grad=False)
    batch, mask = padded_batch(row, pad=5)
    y, state = ssd(**batch, mask=mask, backend="transformers", chunk_size=4)
    expected_y, expected_state = ssd(**batch, mask=mask, backend="reference")
    torch.testing.assert_close(y, expected_y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state, expected_state, atol=1e-4, rtol=1e-4)


def _bad(**changes):
    inputs = make_inputs(batch=2, steps=5, heads=4, head_dim=3, groups=2, state_size=5, grad=False)
    options = {}
    for name, value in changes.items():
        (inputs if name in inputs or name == "mask" else options)[name] = value
    return inputs, options


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"x": [1.0]}, TypeError, "x must be a tensor"),
        ({"x": torch.randn(2, 5, 12, dtype=DOUBLE)}, ValueError, r"x must be \[Bt, T, H, P\]"),
        ({"x": torch.ones(2, 5, 4, 3, dtype=torch.long)}, TypeError, "x must be floating point"),
        ({"x": torch.randn(2, 0, 4, 3, dtype=DOUBLE)}, ValueError, r"T=0"),
        ({"dt": torch.rand(2, 5, 3, dtype=DOUBLE)}, ValueError, r"dt must be \[Bt, T, H\]"),
        ({"dt": torch.ones(2, 5, 4, dtype=torch.int32)}, TypeError, "dt must be floating point"),
        ({"log_decay": torch.rand(2, 4, 4, dtype=DOUBLE)}, ValueError, r"log_decay must be \[Bt, T, H\]"),
        ({"B": torch.randn(2, 5, 10, dtype=DOUBLE)}, ValueError, r"B and C must both be \[Bt, T, G, N\]"),
        (
            {"C": torch.randn(2, 5, 2, 4, dtype=DOUBLE)},
            ValueError,
            r"B and C must both be \[Bt, T, G, N\] of one shape",
        ),
        (
            {"B": torch.randn(2, 5, 3, 5, dtype=DOUBLE), "C": torch.randn(2, 5, 3, 5, dtype=DOUBLE)},
            ValueError,
            "H=4 must be a multiple of the number of groups G=3",
        ),
        (
            {"B": torch.randn(2, 4, 2, 5, dtype=DOUBLE), "C": torch.randn(2, 4, 2, 5, dtype=DOUBLE)},
            ValueError,
            r"with \[Bt, T\] = \[2, 5\]",
        ),
        ({"B": torch.randn(2, 5, 2, 5)}, TypeError, "x, B and C must share one dtype"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
        ({"chunk_size": 4.0}, ValueError, "chunk_size must be a positive int"),
        ({"chunk_size": True}, ValueError, "chunk_size must be a positive int"),
        ({"mask": torch.ones(2, 4, dtype=torch.bool)}, ValueError, r"mask must be \[Bt, T\]"),
        ({"mask": torch.ones(2, 5)}, TypeError, "mask must be bool"),
        (
            {"initial_state": torch.zeros(2, 4, 5, 3, dtype=DOUBLE)},
            ValueError,
            r"initial_state must be \[Bt, H, P, N\] = \[2, 4, 3, 5\]",
        ),
        (
            {"initial_state": torch.zeros(2, 4, 3, 5, dtype=torch.long)},
            TypeError,
            "initial_state must be floating point",
        ),
        ({"initial_state": (torch.zeros(2, 4, 3, 5),)}, TypeError, "initial_state must be a tensor"),
    ],
)
def test_validation_errors(changes, error, match):
    inputs, options = _bad(**changes)
    with pytest.raises(error, match=match):
        ssd(**inputs, **options)


def test_step_validation_errors():
    x, dt, B = torch.randn(2, 4, 3), torch.rand(2, 4), torch.randn(2, 2, 5)
    with pytest.raises(ValueError, match=r"x must be \[Bt, H, P\]"):
        ssd_step(x[0], dt, dt, B, B, None)
    with pytest.raises(ValueError, match=r"log_decay must be \[Bt, H\]"):
        ssd_step(x, dt, dt[:, :3], B, B, None)
    with pytest.raises(ValueError, match="must be a multiple of the number of groups"):
        ssd_step(x, dt, dt, torch.randn(2, 3, 5), torch.randn(2, 3, 5), None)
    with pytest.raises(ValueError, match=r"B and C must be \[Bt, G, N\] with Bt = 2"):
        ssd_step(x, dt, dt, B[:1], B[:1], None)
    with pytest.raises(ValueError, match=r"state must be \[Bt, H, P, N\]"):
        ssd_step(x, dt, dt, B, B, torch.zeros(2, 4, 5, 3))
