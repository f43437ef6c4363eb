"""The `feature_linear_attention` operator (JRT-RNN's causal part), what is specific to it: every backend against
the reference token loop in float64 (outputs and final state, with an initial state and padding, chunk sizes 1, 7
and beyond T); with Taylor features from the zero state it equals the explicit quadratic form of the
second-order Taylor approximation of exp-kernel attention, ``y_i = sum_{j<=i} w_ij v_j / sum_{j<=i} w_ij`` with
``w_ij = 1 + s_ij + s_ij^2 / 2``, ``s_ij = q_i . k_j / sqrt(f)``; the Taylor map's size and inner products; a
left-padded row with NaN at its padding; the final state as sums; a property test of the chunked form over
shapes, chunk sizes and random padding; bad inputs raise clear errors. The generic
contract checks (gradients, single steps, splits, left padding, packed rows, poisoned buffers, bfloat16) live in
the operator conformance kit (`hf_seqplugins.testing.operators`).

Without CUDA the Triton kernel runs in Triton's interpreter, so its cases are tiny (T <= 16).
Tolerances: float64 atol 1e-10 / rtol 1e-9 (observed: 4e-16 relative to the scale for torch, 2e-16 for triton).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_seqplugins import BackendUnavailableError
from hf_seqplugins.kernels.feature_linear_attention import (
    OPERATOR,
    feature_linear_attention,
    taylor_feature_dim,
    taylor_features,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DOUBLE = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-9}
BACKENDS = ("reference", "torch", "triton")


def backend_param(name):
    reason = OPERATOR.unavailable_reason(name, DEVICE)
    return pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=str(reason)), id=name)


FAST = [backend_param(name) for name in BACKENDS if name != "reference"]


def make_inputs(batch=2, steps=37, heads=3, f=2, dim=5, *, seed=0, with_state=True):
    """Taylor features of random queries and keys of size f (F = 1 + f + f^2), and a state of earlier tokens."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=DOUBLE).to(DEVICE)

    q, k = taylor_features(randn(batch, steps, heads, f)), taylor_features(randn(batch, steps, heads, f))
    v = randn(batch, steps, heads, dim)
    state = None
    if with_state:
        earlier = taylor_features(randn(batch, 4, heads, f))
        state = (torch.einsum("bthf,bthd->bhfd", earlier, randn(batch, 4, heads, dim)), earlier.sum(1))
    return q, k, v, state


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_backends_match_the_reference_in_float64(backend, chunk_size):
    steps = 11 if backend == "triton" else 37
    q, k, v, state = make_inputs(steps=steps)
    mask = torch.ones(2, steps, dtype=torch.bool, device=DEVICE)
    mask[1, :3] = False
    mask[1, 6] = False
    expected, expected_state = feature_linear_attention(q, k, v, state, mask, backend="reference")
    got, got_state = feature_linear_attention(q, k, v, state, mask, chunk_size=chunk_size, backend=backend)
    real = mask[..., None, None].expand_as(got)
    torch.testing.assert_close(got[real], expected[real], **TOL)
    for g, e in zip(got_state, expected_state):
        assert g.dtype == DOUBLE
        torch.testing.assert_close(g, e, **TOL)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 3),
    steps=st.integers(1, 40),
    heads=st.integers(1, 3),
    f=st.integers(1, 3),
    dim=st.integers(1, 6),
    chunk_size=st.integers(1, 17),
    seed=st.integers(0, 2**16),
)
def test_chunked_form_matches_the_reference_over_shapes(batch, steps, heads, f, dim, chunk_size, seed):
    q, k, v, state = make_inputs(batch, steps, heads, f, dim, seed=seed)
    mask = torch.rand(batch, steps, generator=torch.Generator().manual_seed(seed)) > 0.3
    expected, expected_state = feature_linear_attention(q, k, v, state, mask.to(DEVICE), backend="reference")
    got, got_state = feature_linear_attention(q, k, v, state, mask.to(DEVICE), chunk_size=chunk_size, backend="torch")
    real = mask.to(DEVICE)[..., None, None].expand_as(got)
    torch.testing.assert_close(got[real], expected[real], **TOL)
    for g, e in zip(got_state, expected_state):
        torch.testing.assert_close(g, e, **TOL)


@pytest.mark.parametrize("backend", [backend_param(name) for name in BACKENDS])
def test_taylor_features_from_zero_equal_the_quadratic_exp_kernel_approximation(backend):
    f = 3
    generator = torch.Generator().manual_seed(1)
    x_q, x_k = (torch.randn(2, 9, 2, f, generator=generator, dtype=DOUBLE).to(DEVICE) for _ in range(2))
    v = torch.randn(2, 9, 2, 4, generator=generator, dtype=DOUBLE).to(DEVICE)
    s = torch.einsum("bihf,bjhf->bhij", x_q, x_k) / math.sqrt(f)
    weights = torch.tril(1 + s + s**2 / 2)
    expected = torch.einsum("bhij,bjhd->bihd", weights, v) / weights.sum(-1).transpose(1, 2)[..., None]
    got, (s_final, z_final) = feature_linear_attention(
        taylor_features(x_q), taylor_features(x_k), v, eps=0.0, backend=backend
    )
    torch.testing.assert_close(got, expected, **TOL)
    phi_k = taylor_features(x_k)
    torch.testing.assert_close(s_final, torch.einsum("bthf,bthd->bhfd", phi_k, v), **TOL)
    torch.testing.assert_close(z_final, phi_k.sum(1), **TOL)


def test_taylor_features_size_and_inner_products():
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 5, 16, generator=generator, dtype=DOUBLE)
    phi_x, phi_y = taylor_features(x), taylor_features(y)
    assert phi_x.shape == (5, taylor_feature_dim(16)) == (5, 273)
    s = (x * y).sum(-1) / 4.0
    torch.testing.assert_close((phi_x * phi_y).sum(-1), 1 + s + s**2 / 2, **TOL)
    assert taylor_features(x.float()).dtype == torch.float32


@pytest.mark.parametrize("backend", [backend_param(name) for name in BACKENDS])
def test_left_padding_with_nan_gives_the_row_alone(backend):
    q, k, v, _ = make_inputs(batch=1, steps=6, heads=2)
    pad = torch.full((1, 3, *q.shape[2:]), float("nan"), dtype=DOUBLE, device=DEVICE)
    pad_v = torch.full((1, 3, *v.shape[2:]), float("nan"), dtype=DOUBLE, device=DEVICE)
    mask = torch.tensor([[False] * 3 + [True] * 6], device=DEVICE)
    padded, padded_state = feature_linear_attention(
        torch.cat([pad, q], 1), torch.cat([pad, k], 1), torch.cat([pad_v, v], 1), mask=mask, backend=backend
    )
    alone, alone_state = feature_linear_attention(q, k, v, backend=backend)
    torch.testing.assert_close(padded[:, 3:], alone, **TOL)
    for p, a in zip(padded_state, alone_state):
        torch.testing.assert_close(p, a, **TOL)


def test_low_precision_inputs_keep_a_float32_state():
    q, k, v, state = make_inputs(steps=8)
    out, (s, z) = feature_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), state)
    assert out.dtype == torch.bfloat16 and s.dtype == z.dtype == torch.float32


def test_bad_inputs_raise_clear_errors():
    q, k, v, state = make_inputs(steps=4)
    with pytest.raises(ValueError, match="k must have the shape of q"):
        feature_linear_attention(q, k[..., :-1], v)
    with pytest.raises(ValueError, match=r"v must be \[B, T, H, D\]"):
        feature_linear_attention(q, k, v[:, :-1])
    with pytest.raises(ValueError, match="q must be 4-dimensional"):
        feature_linear_attention(q[0], k, v)
    with pytest.raises(TypeError, match="q must be a floating-point tensor"):
        feature_linear_attention(q.long(), k, v)
    with pytest.raises(ValueError, match="initial_state"):
        feature_linear_attention(q, k, v, (state[0][:, :1], state[1]))
    with pytest.raises(TypeError, match="initial_state must be a tuple of 2 tensors"):
        feature_linear_attention(q, k, v, state[0])
    with pytest.raises(ValueError, match="mask must be"):
        feature_linear_attention(q, k, v, mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be bool"):
        feature_linear_attention(q, k, v, mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="eps must be"):
        feature_linear_attention(q, k, v, eps=-1.0)
    with pytest.raises(ValueError, match="chunk_size must be"):
        feature_linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="no time steps"):
        feature_linear_attention(q[:, :0], k[:, :0], v[:, :0])
    with pytest.raises(BackendUnavailableError, match="unknown backend 'nope'"):
        feature_linear_attention(q, k, v, backend="nope")
    with pytest.raises(ValueError, match="no features"):
        taylor_features(torch.ones(2, 0))
