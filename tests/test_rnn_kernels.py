"""The head-wise RNN operator, what is specific to it: torch against the reference under masks with gaps
(gradients included) and over random shapes, padding inside a row, heads as independent RNNs, the sLSTM
stabiliser, half precision, validation. The generic contract checks (every backend and example case against
the reference in float64 with gradients, single steps, splits, left padding, packed rows, poisoned buffers,
bfloat16) live in the operator conformance kit (tests/test_operator_conformance.py)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_seqplugins.kernels.rnn import CELLS, NUM_GATES, headwise_rnn, state_shapes

DOUBLE = torch.float64


def make_inputs(
    cell, batch=2, steps=5, heads=2, head_dim=3, proj_size=0, scale=1.0, seed=0, with_state=True, dtype=DOUBLE
):
    g = torch.Generator().manual_seed(seed)
    gates = NUM_GATES[cell]
    out_dim = proj_size or head_dim

    def rand(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * s).requires_grad_()

    inputs = {
        "gates_x": rand(batch, steps, gates, heads, head_dim, s=scale),
        "recurrent_weight": rand(gates, heads, head_dim, out_dim, s=0.5),
        "recurrent_bias": rand(gates, heads, head_dim, s=0.3),
        "projection": rand(heads, proj_size, head_dim, s=0.5) if proj_size else None,
        "initial_state": None,
    }
    if with_state:
        state = [
            torch.randn(*shape, generator=g, dtype=dtype) * 0.5
            for shape in state_shapes(cell, batch, heads, head_dim, proj_size)
        ]
        if cell == "slstm":
            state[2] = state[2].abs() + 1.0  # normalizer n >= 1, as every reachable state has
        inputs["initial_state"] = tuple(s.requires_grad_() for s in state)
    return inputs


def run_with_grads(cell, inputs, backend, mask=None):
    outputs, final = headwise_rnn(cell, **inputs, mask=mask, backend=backend)
    loss = (outputs * torch.linspace(-1, 1, outputs.shape[-1], dtype=outputs.dtype)).sum() + sum(
        (s * 0.3).sum() for s in final
    )
    leaves = [
        t
        for t in (*[v for k, v in inputs.items() if k != "initial_state"], *(inputs["initial_state"] or ()))
        if t is not None
    ]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return outputs, final, grads


def assert_backends_agree(cell, inputs, backend, mask=None, atol=1e-10, rtol=1e-9):
    expected = run_with_grads(cell, inputs, "reference", mask)
    actual = run_with_grads(cell, inputs, backend, mask)
    torch.testing.assert_close(actual[0], expected[0], atol=atol, rtol=rtol)
    for a, e in zip(actual[1], expected[1]):
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol)
    for a, e in zip(actual[2], expected[2]):
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_backend_equals_reference_float64_under_a_mask(cell):
    """Left padding in row 0 and a gap between real tokens in row 1, with the gradients of every input (the kit
    checks the unmasked case with gradients, and left padding without them)."""
    inputs = make_inputs(cell, steps=6)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 1, 1]], dtype=torch.bool)
    assert_backends_agree(cell, inputs, "torch", mask)


@settings(max_examples=25, deadline=None)
@given(
    cell=st.sampled_from(CELLS),
    batch=st.integers(1, 3),
    steps=st.integers(1, 9),
    heads=st.integers(1, 3),
    head_dim=st.integers(1, 5),
    with_state=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_torch_backend_property(cell, batch, steps, heads, head_dim, with_state, seed):
    inputs = make_inputs(cell, batch, steps, heads, head_dim, with_state=with_state, seed=seed)
    assert_backends_agree(cell, inputs, "torch")


def test_padding_steps_leave_the_state_untouched():
    inputs = make_inputs("slstm", batch=1, steps=4)
    mask = torch.tensor([[True, False, False, True]])
    out_masked, final_masked = headwise_rnn("slstm", **inputs, mask=mask)
    kept = {**inputs, "gates_x": inputs["gates_x"][:, [0, 3]]}
    out_short, final_short = headwise_rnn("slstm", **kept)
    torch.testing.assert_close(out_masked[:, [0, 3]], out_short)
    for a, b in zip(final_masked, final_short):
        torch.testing.assert_close(a, b)


def test_multi_head_equals_independent_single_head_rnns():
    inputs = make_inputs("lstm", heads=3, with_state=False)
    outputs, _ = headwise_rnn("lstm", **inputs)
    for n in range(3):
        single, _ = headwise_rnn(
            "lstm",
            inputs["gates_x"][:, :, :, n : n + 1],
            inputs["recurrent_weight"][:, n : n + 1],
            inputs["recurrent_bias"][:, n : n + 1],
        )
        torch.testing.assert_close(outputs[:, :, n : n + 1], single)


def slstm_unstabilised(gates_x, recurrent_weight, recurrent_bias):
    """The sLSTM step without the stabiliser (`docs/architectures/rnn.md`, section 'sLSTM: stabiliser and normalizer'):
    i = exp(i~), f = sigmoid(f~), same c, n, h."""
    batch, steps, _, heads, head_dim = gates_x.shape
    h, c, n = (gates_x.new_zeros(batch, heads, head_dim) for _ in range(3))
    outputs = []
    for t in range(steps):
        pre = gates_x[:, t] + torch.einsum("gndp,bnp->bgnd", recurrent_weight, h) + recurrent_bias
        i, f, z, o = torch.exp(pre[:, 0]), torch.sigmoid(pre[:, 1]), torch.tanh(pre[:, 2]), torch.sigmoid(pre[:, 3])
        c, n = f * c + i * z, f * n + i
        h = o * c / n
        outputs.append(h)
    return torch.stack(outputs, 1)


def test_slstm_stabiliser_is_an_exact_rescaling():
    inputs = make_inputs("slstm", steps=12, with_state=False)
    expected = slstm_unstabilised(inputs["gates_x"], inputs["recurrent_weight"], inputs["recurrent_bias"])
    for backend in ("reference", "torch"):
        outputs, _ = headwise_rnn("slstm", **inputs, normalizer_clamp=False, backend=backend)
        torch.testing.assert_close(outputs, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_slstm_stays_finite_with_huge_preactivations(backend):
    inputs = make_inputs("slstm", steps=300, scale=60.0, with_state=False, dtype=torch.float32)
    outputs, final = headwise_rnn("slstm", **inputs, backend=backend)
    outputs.sum().backward()
    assert torch.isfinite(outputs).all() and all(torch.isfinite(s).all() for s in final)
    assert torch.isfinite(inputs["gates_x"].grad).all()


def test_half_precision_keeps_float32_states():
    inputs = make_inputs("slstm", with_state=False, dtype=torch.float32)
    half = {k: (v.detach().bfloat16() if v is not None else None) for k, v in inputs.items()}
    outputs, final = headwise_rnn("slstm", **half)
    expected, _ = headwise_rnn("slstm", **inputs)
    assert outputs.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in final)
    torch.testing.assert_close(outputs.float(), expected.detach(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: {**i, "gates_x": i["gates_x"][:, :, :2]}, "has 4 gates"),
        (lambda i: {**i, "gates_x": i["gates_x"][0]}, r"\[B, T, G, NH, DH\]"),
        (lambda i: {**i, "recurrent_weight": i["recurrent_weight"][:, :1]}, "recurrent_weight must be"),
        (lambda i: {**i, "recurrent_bias": i["recurrent_bias"][:2]}, "recurrent_bias must be"),
        (lambda i: {**i, "initial_state": i["initial_state"][:1]}, "initial_state for 'lstm'"),
        (lambda i: {**i, "gates_x": i["gates_x"].long()}, "floating point"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    inputs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in make_inputs("lstm").items()}
    inputs["initial_state"] = tuple(s.detach() for s in make_inputs("lstm")["initial_state"])
    with pytest.raises((ValueError, TypeError), match=message):
        headwise_rnn("lstm", **change(inputs))


def test_unknown_cell_and_misplaced_projection_are_refused():
    with pytest.raises(ValueError, match="unknown cell"):
        headwise_rnn("lstm2", torch.randn(1, 2, 4, 1, 2), torch.randn(4, 1, 2, 2))
    with pytest.raises(ValueError, match="only defined for the lstm"):
        headwise_rnn("gru", torch.randn(1, 2, 3, 1, 2), torch.randn(3, 1, 2, 1), projection=torch.randn(1, 1, 2))
    with pytest.raises(ValueError, match="T=0"):
        headwise_rnn("gru", torch.randn(1, 0, 3, 1, 2), torch.randn(3, 1, 2, 2))
    with pytest.raises(ValueError, match="mask must be"):
        headwise_rnn("gru", torch.randn(1, 2, 3, 1, 2), torch.randn(3, 1, 2, 2), mask=torch.ones(2, 2))
