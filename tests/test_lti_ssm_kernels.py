"""The `lti_ssm` operator, what is specific to it: convolution mode against the step recurrence beyond an S4
system's kernel length, the impulse response, S4's Cauchy + Woodbury kernel against the Krylov kernel, the
HiPPO cross-checks, y = 0 at padding, `lti_ssm_step`, float32 systems, random shapes, the FFT length,
validation. The generic contract checks (every backend and system kind against the reference in float64 with
gradients, single steps, splits, left padding, packed rows, poisoned buffers, bfloat16) live in the operator
conformance kit (tests/test_operator_conformance.py).

Tolerances: float64 atol 1e-10 (observed about 1e-14); float32 rtol 1e-4 relative to the output scale.
"""

import dataclasses
import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_seqplugins.core.backends import BackendUnavailableError
from hf_seqplugins.kernels.lti_ssm import (
    OPERATOR,
    DenseSystem,
    DiagonalSystem,
    DPLRSystem,
    lti_ssm,
    lti_ssm_step,
    select_outputs,
)
from hf_seqplugins.kernels.lti_ssm.generators import TORCH_GENERATORS
from hf_seqplugins.plugins.s4.hippo import hippo, nplr_legs

F64 = {"atol": 1e-10, "rtol": 1e-10}


def random_lambda(channels, modes, generator):
    """Stable continuous eigenvalues: Re in [-0.6, -0.1], Im ~ N(0, 9)."""
    real = -0.1 - 0.5 * torch.rand(channels, modes, generator=generator, dtype=torch.float64)
    return torch.complex(real, 3 * torch.randn(channels, modes, generator=generator, dtype=torch.float64))


def crandn(*shape, generator):
    return torch.complex(
        torch.randn(*shape, generator=generator, dtype=torch.float64),
        torch.randn(*shape, generator=generator, dtype=torch.float64),
    )


def make_system(kind, channels=3, modes=4, outputs=2, rank=1, length=16, seed=0):
    """A random float64 system of `kind` and an initial state of its shape (batch 2)."""
    g = torch.Generator().manual_seed(seed)
    lam = random_lambda(channels, modes, g)
    dt = 0.05 + 0.4 * torch.rand(channels, generator=g, dtype=torch.float64)
    if kind == "diagonal":
        system = DiagonalSystem(
            dt[:, None] * lam, crandn(channels, modes, generator=g), crandn(outputs, channels, modes, generator=g)
        )
        state = crandn(2, channels, modes, generator=g)
    elif kind == "dplr":
        system = DPLRSystem(
            lam,
            0.5 * crandn(rank, channels, modes, generator=g),
            crandn(channels, modes, generator=g),
            crandn(outputs, channels, modes, generator=g),
            dt,
            length,
        )
        state = crandn(2, channels, 2 * modes, generator=g)
    else:
        a = 0.3 * torch.randn(channels, modes, modes, generator=g, dtype=torch.float64)
        system = DenseSystem(
            a,
            torch.randn(channels, modes, generator=g, dtype=torch.float64),
            torch.randn(outputs, channels, modes, generator=g, dtype=torch.float64),
        )
        state = torch.randn(2, channels, modes, generator=g, dtype=torch.float64)
    return system, state


KINDS = ["diagonal", "dplr", "dense"]


CONVOLUTION_BACKENDS = [(kind, "torch") for kind in KINDS] + [(kind, "triton") for kind in ("diagonal", "dplr")]


@pytest.mark.parametrize("kind,backend", CONVOLUTION_BACKENDS)
@pytest.mark.parametrize("with_state", [False, True])
def test_convolution_equals_recurrence_float64(kind, backend, with_state):
    """The triton backend (in Triton's interpreter without CUDA) takes its Vandermonde / Cauchy sums from the
    Triton kernels and everything else from the torch backend."""
    reason = OPERATOR.unavailable_reason(backend, torch.device("cpu"))
    if reason is not None:
        pytest.skip(reason)
    system, state = make_system(kind)
    u = torch.randn(2, 21, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    state = state if with_state else None
    y_ref, final_ref = lti_ssm(u, system, state, backend="reference")
    y, final = lti_ssm(u, system, state, backend=backend)
    assert y.shape == (2, 21, 2, 3) and final.shape == final_ref.shape
    torch.testing.assert_close(y, y_ref, **F64)
    torch.testing.assert_close(final, final_ref, **F64)


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_is_the_impulse_response(kind):
    system, _ = make_system(kind)
    impulse = torch.zeros(1, 12, 3, dtype=torch.float64)
    impulse[:, 0] = 1
    response, _ = lti_ssm(impulse, system, backend="reference")
    kernel = system.kernel(12, TORCH_GENERATORS)
    torch.testing.assert_close(kernel, response[0].permute(1, 2, 0), **F64)


@pytest.mark.parametrize("length,rank", [(16, 1), (7, 1), (8, 2), (4, 1), (32, 3)])
def test_cauchy_woodbury_kernel_equals_the_krylov_kernel(length, rank):
    """Even and odd node counts (Nyquist node or not), doubling (length < 23) and rank > 1."""
    system, _ = make_system("dplr", rank=rank, length=length)
    dense = system.dense()
    torch.testing.assert_close(system.kernel(23, TORCH_GENERATORS), dense.kernel(23), **F64)


def test_c_tilde_round_trip():
    system, _ = make_system("dplr", length=10)
    c = crandn(2, 3, 4, generator=torch.Generator().manual_seed(3))
    tilde = system.c_tilde_of(c)
    recovered = DPLRSystem(system.lam, system.p, system.b, tilde, system.dt, 10).dense().c
    torch.testing.assert_close(recovered, torch.cat([c, c.conj()], -1), **F64)


def test_hippo_legs_nplr_reconstructs_a():
    size = 8
    lam, p, b, basis = nplr_legs(size)
    a, b_hippo = hippo("legs", size)
    vectors = torch.cat([basis, basis.conj()], dim=1)
    full = lambda t: torch.cat([t, t.conj()])  # noqa: E731
    rebuilt = vectors @ (torch.diag(full(lam)) - torch.outer(full(p), full(p).conj())) @ vectors.conj().T
    torch.testing.assert_close(rebuilt.real, a, atol=1e-12, rtol=0)
    assert rebuilt.imag.abs().max() < 1e-12
    torch.testing.assert_close(vectors @ full(b), b_hippo.to(vectors.dtype), atol=1e-12, rtol=0)
    assert torch.allclose(lam.real, torch.tensor(-0.5, dtype=torch.float64)) and torch.all(lam.imag < 0)


def test_lssl_kernel_equals_the_s4_kernel_in_the_eigenbasis():
    """HiPPO-LegS with one Δ, bilinear; the dense real (LSSL) and DPLR (S4) systems give one kernel."""
    size, length, dt = 16, 32, torch.tensor([0.1], dtype=torch.float64)
    a, b = hippo("legs", size)
    c = torch.randn(1, 1, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    identity = torch.eye(size, dtype=torch.float64)
    a_bar = torch.linalg.solve(identity - dt / 2 * a, identity + dt / 2 * a)
    b_bar = torch.linalg.solve(identity - dt / 2 * a, dt * b)
    lssl = DenseSystem(a_bar[None], b_bar[None], c)
    lam, p, b_eig, basis = nplr_legs(size)
    s4 = DPLRSystem(lam[None], p[None, None], b_eig[None], (c.to(basis.dtype) @ basis), dt, length)
    s4 = DPLRSystem(s4.lam, s4.p, s4.b, s4.c_tilde_of(s4.c_tilde), dt, length)
    torch.testing.assert_close(s4.kernel(length, TORCH_GENERATORS), lssl.kernel(length), atol=1e-11, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding_equals_the_unpadded_row(kind):
    system, _ = make_system(kind)
    u = torch.randn(2, 9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :4] = False
    u_garbage = u.clone()
    u_garbage[1, :4] = 1e3
    for backend in ("reference", "torch"):
        y, final = lti_ssm(u_garbage, system, mask=mask, backend=backend)
        alone, final_alone = lti_ssm(u[1:, 4:], system, backend="reference")
        torch.testing.assert_close(y[1, 4:], alone[0], **F64)
        torch.testing.assert_close(final[1], final_alone[0], **F64)
        assert torch.all(y[1, :4] == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_steps_equal_one_pass(kind):
    system, _ = make_system(kind)
    u = torch.randn(2, 14, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    full, final = lti_ssm(u, system, backend="torch")
    y, state = lti_ssm(u[:, :9], system, backend="torch")
    steps = [y]
    step_system = system.dense() if isinstance(system, DPLRSystem) else system
    for t in range(9, 14):
        y_t, state = lti_ssm_step(u[:, t], step_system, state)
        steps.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(steps, 1), full, **F64)
    torch.testing.assert_close(state, final, **F64)


def test_without_final_state_returns_none_and_same_outputs():
    system, _ = make_system("dplr")
    u = torch.randn(1, 6, 3, dtype=torch.float64)
    y, final = lti_ssm(u, system, return_final_state=False, backend="torch")
    assert final is None
    torch.testing.assert_close(y, lti_ssm(u, system, backend="reference")[0], **F64)


def test_float32_systems_stay_close_to_float64():
    for kind in KINDS:
        system, state = make_system(kind)
        u = torch.randn(2, 40, 3, dtype=torch.float64)
        expected, expected_final = lti_ssm(u, system, state, backend="reference")
        values = {f.name: getattr(system, f.name) for f in dataclasses.fields(system)}
        low = type(system)(
            **{
                k: v.to(torch.complex64 if v.is_complex() else torch.float32) if isinstance(v, torch.Tensor) else v
                for k, v in values.items()
            }
        )
        y, final = lti_ssm(u.float(), low, state.to(low.state_dtype), backend="torch")
        assert y.dtype == torch.float32
        scale = expected.abs().max().item()
        torch.testing.assert_close(y.double(), expected, atol=1e-4 * scale, rtol=0)
        torch.testing.assert_close(
            final.to(expected_final.dtype), expected_final, atol=1e-4 * expected_final.abs().max().item(), rtol=0
        )


@settings(max_examples=15, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    steps=st.integers(1, 40),
    channels=st.integers(1, 4),
    modes=st.integers(1, 5),
    outputs=st.integers(1, 3),
    length=st.integers(1, 20),
    seed=st.integers(0, 1000),
)
def test_property_shapes_and_lengths(kind, steps, channels, modes, outputs, length, seed):
    system, state = make_system(kind, channels, modes, outputs, length=length, seed=seed)
    u = torch.randn(2, steps, channels, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y_ref, final_ref = lti_ssm(u, system, state, backend="reference")
    y, final = lti_ssm(u, system, state, backend="torch")
    scale = 1 + y_ref.abs().max().item()
    torch.testing.assert_close(y, y_ref, atol=1e-9 * scale, rtol=0)
    torch.testing.assert_close(final, final_ref, atol=1e-9 * (1 + final_ref.abs().max().item()), rtol=0)


def test_select_outputs_keeps_the_rest():
    for kind in KINDS:
        system, _ = make_system(kind, outputs=3)
        u = torch.randn(1, 5, 3, dtype=torch.float64)
        y, _ = lti_ssm(u, system, backend="torch")
        part, _ = lti_ssm(u, select_outputs(system, slice(1, 3)), backend="torch")
        torch.testing.assert_close(part, y[:, :, 1:3], **F64)


def test_bad_inputs_raise_clear_errors():
    system, state = make_system("diagonal")
    u = torch.randn(2, 5, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="system must be one of"):
        lti_ssm(u, "s4")
    with pytest.raises(ValueError, match=r"u must be \[Bt, T, H\]"):
        lti_ssm(u[0], system)
    with pytest.raises(ValueError, match="H=4 channels"):
        lti_ssm(torch.randn(2, 5, 4, dtype=torch.float64), system)
    with pytest.raises(ValueError, match="no time steps"):
        lti_ssm(u[:, :0], system)
    with pytest.raises(TypeError, match="floating-point"):
        lti_ssm(u.long(), system)
    with pytest.raises(ValueError, match="initial_state must be"):
        lti_ssm(u, system, state[:, :2])
    with pytest.raises(ValueError, match="mask must be"):
        lti_ssm(u, system, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be bool"):
        lti_ssm(u, system, mask=torch.ones(2, 5))
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        lti_ssm(u, system, backend="cuda-magic")
    with pytest.raises(ValueError, match=r"lti_ssm_step: u must be"):
        lti_ssm_step(u, system, None)


def test_triton_refuses_dense_systems_with_a_reason():
    dense, _ = make_system("dense")
    u = torch.randn(1, 4, 3, dtype=torch.float64)
    reason = OPERATOR.input_checks["triton"](u, dense, None, None, True)
    assert "Krylov" in reason and "torch" in reason
    assert OPERATOR.input_checks["triton"](u, make_system("diagonal")[0], None, None, True) is None


def test_fft_length_avoids_circular_wrap():
    """A kernel that does not decay (|Ā| = 1) makes any wrap-around visible."""
    modes = torch.tensor([[0.7j]], dtype=torch.complex128)
    system = DiagonalSystem(
        modes, torch.ones(1, 1, dtype=torch.complex128), torch.ones(1, 1, 1, dtype=torch.complex128)
    )
    u = torch.randn(1, 33, 1, dtype=torch.float64)
    torch.testing.assert_close(
        lti_ssm(u, system, backend="torch")[0], lti_ssm(u, system, backend="reference")[0], **F64
    )
    assert math.isclose(system.kernel(1, TORCH_GENERATORS).item(), 2.0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cauchy_shares_the_poles_over_leading_dimensions_and_has_exact_gradients(backend):
    """v `[P, R, N2]` against one pole set w `[R, N2]`: equals the plain formula per slice; gradients by gradcheck
    (the torch generator's backward is analytic)."""
    reason = OPERATOR.unavailable_reason(backend, torch.device("cpu"))
    if reason is not None:
        pytest.skip(reason)
    module = "generators" if backend == "torch" else "triton_impl"
    cauchy = importlib.import_module(f"hf_seqplugins.kernels.lti_ssm.{module}").cauchy
    g = torch.Generator().manual_seed(0)
    v = crandn(2, 3, 4, generator=g).requires_grad_()
    w = (random_lambda(3, 4, g) * 0.3).requires_grad_()
    z = crandn(5, generator=g)

    def plain(v, w):
        nodes = z[:, None]
        return (
            v[..., None, :] / (nodes - w[:, None, :]) + v.conj()[..., None, :] / (nodes - w.conj()[:, None, :])
        ).sum(-1)

    torch.testing.assert_close(cauchy(v, z, w), plain(v, w), **F64)
    weights = crandn(2, 3, 5, generator=g)
    loss = lambda f: (f(v, w) * weights).real.sum()  # noqa: E731
    for mine, theirs in zip(
        torch.autograd.grad(loss(lambda a, b: cauchy(a, z, b)), [v, w]), torch.autograd.grad(loss(plain), [v, w])
    ):
        torch.testing.assert_close(mine, theirs, **F64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_state", [False, True])
def test_final_state_over_several_chunks(kind, with_state, monkeypatch):
    """The closed-form final state sums chunks of FINAL_STATE_CHUNK steps (5 here: T = 23 is 4 chunks and zeros)."""
    from hf_seqplugins.kernels.lti_ssm import systems

    monkeypatch.setattr(systems, "FINAL_STATE_CHUNK", 5)
    system, state = make_system(kind)
    state = state if with_state else None
    u = torch.randn(2, 23, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    expected = lti_ssm(u, system, state, backend="reference")[1]
    torch.testing.assert_close(lti_ssm(u, system, state, backend="torch")[1], expected, **F64)
