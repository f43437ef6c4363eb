"""The mLSTM operator, what is specific to it: chunkwise and parallel forms against the step loop with
gradients across chunks, eps = 0, tiny shapes, large gates, random shapes and chunk sizes, right padding and
rows of padding only, `mlstm_step` (and one-token calls of every backend equal to it), long sequences, half
precision, validation, and parity with mlstm_kernels' native torch functions. The generic contract checks
(every backend and gate against the reference in float64 with gradients, chunk sizes 2, 5, 16, single
steps, splits, left padding, packed rows, poisoned buffers, bfloat16) live in the operator conformance kit
(tests/test_operator_conformance.py).

Public layout (batch first, time second): q, k `[B, T, NH, DK]`, v `[B, T, NH, DV]`, gates `[B, T, NH]`,
h `[B, T, NH, DV]`; mlstm_kernels' functions take heads first `[B, NH, T, ...]` (`heads_first`).

Tolerances: float64 comparisons of our backends use atol 1e-10 / rtol 1e-8 (measured differences
are about 1e-13); the float32 long-sequence check and the half-precision checks state their own.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_seqplugins.core.backends import BackendUnavailableError
from hf_seqplugins.kernels.mlstm import OPERATOR, mlstm, mlstm_step, state_shapes

DOUBLE = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-8}
GATES = [("exp", True), ("sigmoid", True), ("sigmoid", False)]
SEQUENCES = ("q", "k", "v", "igate", "fgate")


def make_inputs(
    batch=2, heads=2, steps=11, dk=4, dv=3, seed=0, with_state=True, dtype=DOUBLE, i_scale=2.0, f_scale=2.0, grad=True
):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale + shift).requires_grad_(grad)

    inputs = {
        "q": rand(batch, steps, heads, dk),
        "k": rand(batch, steps, heads, dk),
        "v": rand(batch, steps, heads, dv),
        "igate": rand(batch, steps, heads, scale=i_scale),
        "fgate": rand(batch, steps, heads, scale=f_scale, shift=1.0),
        "initial_state": None,
    }
    if with_state:
        c_shape, n_shape, m_shape = state_shapes(batch, heads, dk, dv)
        inputs["initial_state"] = (rand(*c_shape, scale=0.5), rand(*n_shape, scale=0.5), rand(*m_shape))
    return inputs


def heads_first(t):
    """A public `[B, T, NH, ...]` tensor in mlstm_kernels' (and our backends') `[B, NH, T, ...]` layout."""
    return t.transpose(1, 2)


def leaves(inputs):
    return [inputs[name] for name in SEQUENCES] + list(inputs["initial_state"] or ())


def run_with_grads(inputs, backend, mask=None, **options):
    return with_grads(*mlstm(**inputs, mask=mask, backend=backend, **options), inputs)


def with_grads(h, state, inputs):
    weights = torch.linspace(-1, 1, h.shape[-1], dtype=h.dtype)
    loss = (h * weights).sum() + (state[0] * 0.3).sum() + (state[1] * 0.2).sum() + (state[2] * 0.1).sum()
    grads = torch.autograd.grad(loss, leaves(inputs), allow_unused=True)
    return h, state, grads


def assert_same(actual, expected, **tol):
    tol = tol or TOL
    torch.testing.assert_close(actual[0], expected[0], **tol)
    for a, e in zip(actual[1], expected[1]):
        torch.testing.assert_close(a, e, **tol)
    for a, e in zip(actual[2], expected[2]):
        assert (a is None) == (e is None)
        if a is not None:
            torch.testing.assert_close(a, e, **tol)


@pytest.mark.parametrize(("input_gate", "normalize"), GATES)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize(("backend", "chunk_size"), [("torch", 4), ("torch", 8), ("torch", 64), ("parallel", 4)])
def test_fast_backends_equal_reference_float64(input_gate, normalize, with_state, backend, chunk_size):
    inputs = make_inputs(steps=11, with_state=with_state, seed=chunk_size)
    options = {"input_gate": input_gate, "normalize": normalize, "chunk_size": chunk_size}
    assert_same(run_with_grads(inputs, backend, **options), run_with_grads(inputs, "reference", **options))


@pytest.mark.parametrize("backend", ["torch", "parallel"])
@pytest.mark.parametrize("input_gate", ["exp", "sigmoid"])
def test_eps_zero_and_tiny_shapes(backend, input_gate):
    for shape in [(1, 1, 1, 1, 1), (1, 1, 1, 3, 2), (2, 1, 5, 1, 2)]:
        inputs = make_inputs(*shape, seed=sum(shape))
        options = {"input_gate": input_gate, "eps": 0.0, "chunk_size": 2}
        assert_same(run_with_grads(inputs, backend, **options), run_with_grads(inputs, "reference", **options))


def test_large_gates_float64():
    """Gate pre-activations far outside the soft-cap range exercise the max stabiliser."""
    inputs = make_inputs(steps=20, i_scale=40.0, f_scale=40.0, seed=3)
    for backend in ("torch", "parallel"):
        assert_same(run_with_grads(inputs, backend, chunk_size=8), run_with_grads(inputs, "reference"))


def padded_batch(row, pad):
    """Three rows holding `row` (tensors [1, T, ...]): left padded, right padded, and a row of padding
    only; the padded slots carry garbage."""
    g = torch.Generator().manual_seed(7)
    steps = row["q"].shape[1]
    out = {}
    for name in SEQUENCES:
        x = row[name].detach()
        junk = torch.randn((3, steps + pad, *x.shape[2:]), generator=g, dtype=x.dtype) * 50
        junk[0:1, pad:] = x
        junk[1:2, :steps] = x
        out[name] = junk.requires_grad_()
    mask = torch.zeros(3, steps + pad, dtype=torch.bool)
    mask[0, pad:] = True
    mask[1, :steps] = True
    state = row["initial_state"]
    out["initial_state"] = (
        None if state is None else tuple(s.detach().expand(3, *s.shape[1:]).clone().requires_grad_() for s in state)
    )
    return out, mask


@pytest.mark.parametrize(("input_gate", "normalize"), GATES)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("backend", ["reference", "torch", "parallel"])
def test_padded_rows_equal_the_row_alone(input_gate, normalize, with_state, backend):
    row = make_inputs(batch=1, steps=6, with_state=with_state, seed=11, i_scale=5.0)
    options = {"input_gate": input_gate, "normalize": normalize, "chunk_size": 4}
    alone_h, alone_state = mlstm(**row, **options, backend="reference")
    batch, mask = padded_batch(row, pad=3)
    h, state, grads = run_with_grads(batch, backend, mask=mask, **options)
    torch.testing.assert_close(h[0:1, 3:], alone_h, **TOL)
    torch.testing.assert_close(h[1:2, :6], alone_h, **TOL)
    assert torch.count_nonzero(h[0, :3]) == torch.count_nonzero(h[1, 6:]) == torch.count_nonzero(h[2]) == 0
    for s, alone in zip(state, alone_state):
        torch.testing.assert_close(s[0:1], alone, **TOL)
        torch.testing.assert_close(s[1:2], alone, **TOL)
    initial = batch["initial_state"] or tuple(torch.zeros_like(s) for s in state)
    for s, s0 in zip(state, initial):
        torch.testing.assert_close(s[2], s0[2].detach(), atol=0, rtol=0)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    for name, g in zip(SEQUENCES, grads):
        assert torch.count_nonzero(g[0, :3]) == torch.count_nonzero(g[2]) == 0, name


@pytest.mark.parametrize(("input_gate", "normalize"), GATES)
def test_step_loop_equals_reference(input_gate, normalize):
    inputs = make_inputs(steps=7, grad=False)
    options = {"input_gate": input_gate, "normalize": normalize}
    expected_h, expected_state = mlstm(**inputs, **options, backend="reference")
    state = inputs["initial_state"]
    outputs = []
    for t in range(7):
        h, state = mlstm_step(*(inputs[name][:, t] for name in SEQUENCES), state, **options)
        outputs.append(h)
    torch.testing.assert_close(torch.stack(outputs, dim=1), expected_h, **TOL)
    for a, e in zip(state, expected_state):
        torch.testing.assert_close(a, e, **TOL)


def test_step_from_no_state_and_half_precision():
    inputs = make_inputs(batch=1, heads=2, steps=1, grad=False, with_state=False)
    step_args = [inputs[name][:, 0] for name in SEQUENCES]
    h, _ = mlstm_step(*step_args, None)
    expected_h, _ = mlstm(**inputs, backend="reference")
    torch.testing.assert_close(h, expected_h[:, 0], **TOL)
    h16, state16 = mlstm_step(*(t.to(torch.bfloat16) for t in step_args), None)
    assert h16.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in state16)
    torch.testing.assert_close(h16.double(), h, atol=3e-2, rtol=3e-2)


def test_long_sequence_with_large_gates_float32():
    """T=4096, gate pre-activations ~ N(0, 30): float32 chunkwise and parallel stay finite and agree with
    the float64 step loop to 2e-4 relative to the output scale (measured: about 1e-5)."""
    inputs = make_inputs(batch=1, heads=1, steps=4096, dk=4, dv=4, i_scale=30.0, f_scale=30.0, seed=5, grad=False)
    expected_h, expected_state = mlstm(**inputs, backend="reference")
    single = {
        name: (t.float() if isinstance(t, torch.Tensor) else tuple(s.float() for s in t)) for name, t in inputs.items()
    }
    for backend in ("torch", "parallel"):
        h, state = mlstm(**single, backend=backend, chunk_size=64)
        assert torch.isfinite(h).all() and all(torch.isfinite(s).all() for s in state)
        scale = expected_h.abs().max()
        torch.testing.assert_close(h.double(), expected_h, atol=2e-4 * scale, rtol=0)
        for a, e in zip(state, expected_state):
            torch.testing.assert_close(a.double(), e, atol=2e-4 * e.abs().max(), rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["reference", "torch", "parallel"])
def test_half_precision_inputs(dtype, backend):
    inputs = make_inputs(steps=10, dtype=torch.float32, grad=False, i_scale=10.0)
    half = {name: (t.to(dtype) if isinstance(t, torch.Tensor) else t) for name, t in inputs.items()}
    expected_h, _ = mlstm(**inputs, backend="reference")
    h, state = mlstm(**half, backend=backend, chunk_size=4)
    assert h.dtype == dtype and all(s.dtype == torch.float32 for s in state)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h.float(), expected_h, atol=5e-2, rtol=5e-2)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 2),
    steps=st.integers(1, 12),
    dk=st.integers(1, 4),
    dv=st.integers(1, 4),
    chunk_size=st.integers(1, 9),
    gate=st.sampled_from(GATES),
    with_state=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_torch_backend_property(batch, heads, steps, dk, dv, chunk_size, gate, with_state, seed):
    inputs = make_inputs(batch, heads, steps, dk, dv, seed=seed, with_state=with_state)
    options = {"input_gate": gate[0], "normalize": gate[1], "chunk_size": chunk_size}
    assert_same(run_with_grads(inputs, "torch", **options), run_with_grads(inputs, "reference", **options))


def test_auto_backend_on_cpu_is_torch():
    args, kwargs = OPERATOR.validate(*make_inputs(grad=False).values())
    assert OPERATOR.resolve(None, torch.device("cpu"), args, kwargs) == "torch"


def _bad(**changes):
    inputs = make_inputs(batch=2, heads=2, steps=5, dk=4, dv=3, grad=False)
    options = {}
    for name, value in changes.items():
        (inputs if name in inputs or name == "mask" else options)[name] = value
    return inputs, options


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"q": torch.randn(2, 5, 2)}, ValueError, r"q must be \[B, T, NH, DK\]"),
        ({"k": torch.randn(2, 5, 2, 3, dtype=DOUBLE)}, ValueError, r"k must have q's shape \[B, T, NH, DK\]"),
        ({"v": torch.randn(2, 4, 2, 3, dtype=DOUBLE)}, ValueError, r"v must be \[B, T, NH, DV\]"),
        ({"v": torch.randn(2, 5, 2, 3)}, TypeError, "q, k and v must share one dtype"),
        ({"igate": torch.randn(2, 4, 2, dtype=DOUBLE)}, ValueError, r"igate must be \[B, T, NH\]"),
        ({"fgate": torch.randn(2, 5, dtype=DOUBLE)}, ValueError, r"fgate must be \[B, T, NH\]"),
        ({"q": torch.ones(2, 5, 2, 4, dtype=torch.long)}, TypeError, "q must be floating point"),
        ({"igate": torch.ones(2, 5, 2, dtype=torch.int32)}, TypeError, "igate must be floating point"),
        ({"q": torch.randn(2, 0, 2, 4, dtype=DOUBLE)}, ValueError, r"T=0"),
        ({"input_gate": "relu"}, ValueError, "unknown input_gate 'relu'"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
        ({"chunk_size": 4.0}, ValueError, "chunk_size must be a positive int"),
        ({"eps": -1.0}, ValueError, "eps must be"),
        ({"normalize": "yes"}, TypeError, "normalize must be a bool"),
        ({"mask": torch.ones(2, 4, dtype=torch.bool)}, ValueError, r"mask must be \[B, T\]"),
        ({"mask": torch.ones(2, 5)}, TypeError, "mask must be bool"),
        (
            {"initial_state": (torch.zeros(2, 2, 4, 3), torch.zeros(2, 2, 4))},
            ValueError,
            r"state must be a tuple \(C, n, m\)",
        ),
        (
            {"initial_state": (torch.zeros(2, 2, 3, 4), torch.zeros(2, 2, 4), torch.zeros(2, 2))},
            ValueError,
            "must have shapes",
        ),
        (
            {"initial_state": (torch.zeros(2, 2, 4, 3), torch.zeros(2, 2, 4), torch.zeros(2, 2, 1))},
            ValueError,
            "must have shapes",
        ),
        (
            {"initial_state": (torch.zeros(2, 2, 4, 3), torch.zeros(2, 2, 4, dtype=torch.long), torch.zeros(2, 2))},
            TypeError,
            "state n must be floating point",
        ),
    ],
)
def test_validation_errors(changes, error, match):
    inputs, options = _bad(**changes)
    with pytest.raises(error, match=match):
        mlstm(**inputs, **options)


def test_step_validation_errors():
    q = torch.randn(2, 2, 4)
    with pytest.raises(ValueError, match=r"v must be \[B, NH, DV\]"):
        mlstm_step(q, q, torch.randn(2, 3, 3), torch.randn(2, 2), torch.randn(2, 2), None)
    with pytest.raises(ValueError, match=r"fgate must be \[B, NH\]"):
        mlstm_step(q, q, torch.randn(2, 2, 3), torch.randn(2, 2), torch.randn(2, 2, 1), None)
    with pytest.raises(ValueError, match="must have shapes"):
        mlstm_step(
            q,
            q,
            torch.randn(2, 2, 3),
            torch.randn(2, 2),
            torch.randn(2, 2),
            (torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4), torch.zeros(2, 2)),
        )


def _peers():
    return pytest.importorskip("mlstm_kernels", reason="mlstm_kernels (peer parity) is not installed")


@pytest.mark.peers
@pytest.mark.parametrize("with_state", [False, True])
def test_peer_recurrent_step_equals_ours(with_state):
    _peers()
    from mlstm_kernels.torch.recurrent.native_step import mlstm_recurrent_step__native

    inputs = make_inputs(steps=6, with_state=with_state, grad=False, i_scale=5.0)
    c, n, m = inputs["initial_state"] or tuple(torch.zeros(s, dtype=DOUBLE) for s in state_shapes(2, 2, 4, 3))
    ours = inputs["initial_state"]
    for t in range(6):
        q, k, v, i, f = (inputs[name][:, t] for name in SEQUENCES)
        h_peer, (c, n, m) = mlstm_recurrent_step__native(
            q, k, v, i[..., None], f[..., None], c, n, m[..., None], eps=1e-6, dtype_state=DOUBLE
        )
        m = m[..., 0]
        h, ours = mlstm_step(q, k, v, i, f, ours)
        torch.testing.assert_close(h, h_peer, **TOL)
        for a, e in zip(ours, (c, n, m)):
            torch.testing.assert_close(a, e, **TOL)


@pytest.mark.peers
@pytest.mark.parametrize("with_state", [False, True])
def test_peer_chunkwise_native_equals_ours(with_state):
    """Values, final states and gradients of every input against `chunkwise--native_autograd` (float64,
    atol 1e-10: the same function, measured differences about 1e-14), through the operator's peer
    backend and directly."""
    _peers()
    from mlstm_kernels.torch.chunkwise.native import mlstm_chunkwise__native_autograd

    inputs = make_inputs(steps=12, with_state=with_state, i_scale=5.0)
    for chunk_size in (4, 5):
        assert_same(run_with_grads(inputs, "mlstm_kernels", chunk_size=chunk_size), run_with_grads(inputs, "reference"))
    state = inputs["initial_state"]
    c, n, m = (None, None, None) if state is None else (state[0], state[1], state[2][..., None])
    h_peer, last = mlstm_chunkwise__native_autograd(
        *(heads_first(inputs[name]) for name in SEQUENCES), c, n, m, return_last_states=True, eps=1e-6, chunk_size=4
    )
    h, ours = mlstm(**inputs, chunk_size=3)
    torch.testing.assert_close(heads_first(h), h_peer, **TOL)
    for a, e in zip(ours, (last[0], last[1], last[2][..., 0])):
        torch.testing.assert_close(a, e, **TOL)


@pytest.mark.peers
def test_peer_backend_refusal_and_padding():
    _peers()
    inputs = make_inputs(steps=10, grad=False)
    with pytest.raises(BackendUnavailableError, match="input_gate='sigmoid'"):
        mlstm(**inputs, input_gate="sigmoid", backend="mlstm_kernels")
    row = make_inputs(batch=1, steps=5, seed=2)
    batch, mask = padded_batch(row, pad=3)
    h, state, grads = run_with_grads(batch, "mlstm_kernels", mask=mask, chunk_size=4)
    assert_same((h, state, grads), run_with_grads(batch, "reference", mask=mask))


@pytest.mark.peers
@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_peer_parallel_stablef_equals_ours(eps):
    """`parallel--native_stablef` has no m_0 = 0 term (`docs/architectures/xlstm.md`, section 'Pitfalls handled'), so
    eps enters at another scale where the max comes from m_0 (input gates shifted to -4 here): equal at eps=0 (atol
    1e-10); at eps=1e-6 within 1e-5 relative to the output scale (measured 4e-7 relative)."""
    _peers()
    from mlstm_kernels.torch.parallel.native_stablef import mlstm_parallel__native_stablef_autograd

    inputs = make_inputs(steps=16, with_state=False, grad=False, i_scale=1.0)
    args = [inputs[name] for name in SEQUENCES]
    args[3] = args[3] - 4.0
    h_peer = heads_first(mlstm_parallel__native_stablef_autograd(*map(heads_first, args), eps=eps))
    for backend in ("parallel", "torch"):
        h, _ = mlstm(*args, eps=eps, chunk_size=4, backend=backend)
        tol = TOL if eps == 0 else {"atol": 1e-5 * h_peer.abs().max().item(), "rtol": 0}
        torch.testing.assert_close(h, h_peer, **tol)
    if eps:
        assert (h - h_peer).abs().max() > 1e-9, "the eps-level difference this test documents should show"


@pytest.mark.peers
@pytest.mark.parametrize("normalize", [True, False])
def test_peer_sigmoid_parallel_equals_ours(normalize):
    _peers()
    from mlstm_kernels.torch.parallel.native_siging import mlstm_siging_parallel__native_autograd

    inputs = make_inputs(steps=9, with_state=False, grad=False)
    args = [inputs[name] for name in SEQUENCES]
    h_peer = heads_first(mlstm_siging_parallel__native_autograd(*map(heads_first, args), eps=1e-6, normalize=normalize))
    h, _ = mlstm(*args, input_gate="sigmoid", normalize=normalize, chunk_size=4)
    torch.testing.assert_close(h, h_peer, **TOL)


def test_16k_tokens_in_bfloat16_with_large_gates_stay_finite_forward_and_backward():
    """The model's training path (chunkwise torch, bf16 q/k/v, float32 gates) over 16384 tokens with gate
    pre-activations ~ N(0, 30): no inf or NaN in outputs, final state or any gradient."""
    g = torch.Generator().manual_seed(16)
    q, k, v = (torch.randn(1, 16384, 2, 8, generator=g).to(torch.bfloat16).requires_grad_() for _ in range(3))
    igate, fgate = (torch.randn(1, 16384, 2, generator=g).mul(30).requires_grad_() for _ in range(2))
    h, state = mlstm(q, k, v, igate, fgate, backend="torch")
    assert h.dtype == torch.bfloat16 and torch.isfinite(h).all() and all(torch.isfinite(s).all() for s in state)
    (h.float().square().mean() + state[0].square().mean()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, igate, fgate))


@pytest.mark.parametrize(("input_gate", "normalize"), GATES)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("backend", [None, *OPERATOR.backends])
def test_single_step_equals_the_reference_step_for_every_backend_float64(input_gate, normalize, with_state, backend):
    """T=1 (decoding) runs the reference backend's single step whatever backend is named: values and
    gradients equal `mlstm_step` on the one token (the same step, so exactly)."""
    inputs = make_inputs(steps=1, with_state=with_state, seed=13)
    options = {"input_gate": input_gate, "normalize": normalize}
    h, state = mlstm_step(*(inputs[name][:, 0] for name in SEQUENCES), inputs["initial_state"], **options)
    expected = with_grads(h[:, None], state, inputs)
    assert_same(run_with_grads(inputs, backend, **options), expected, atol=0, rtol=0)
