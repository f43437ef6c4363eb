"""The `linear_scan` operator, what is specific to it: the torch doubling scan and the chunked scan against
the step loop (float64, gradients) for 2 x 2 and 3 x 3 blocks, with and without an initial state, random
lengths and block sizes, half precision, validation; the Triton backend has its own file. The generic
contract checks (every backend against the reference in float64 with gradients, single steps, splits, left
padding, packed rows, poisoned buffers, bfloat16) live in the operator conformance kit
(tests/test_operator_conformance.py)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_seqplugins.core.backends import BackendUnavailableError
from hf_seqplugins.kernels.linear_scan import linear_scan

F64 = {"atol": 1e-12, "rtol": 1e-12}


def make(batch, steps, channels, block, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    a_shape = (batch, steps, channels) + ((block, block) if block else ())
    b_shape = (batch, steps, channels) + ((block,) if block else ())
    scale = 1.0 / block if block else 1.0  # keeps long products of transitions bounded
    a = (2 * torch.rand(a_shape, generator=g, dtype=torch.float64) - 1) * scale
    b = torch.randn(b_shape, generator=g, dtype=torch.float64)
    s0 = torch.randn(batch, *b_shape[2:], generator=g, dtype=torch.float64)
    return [t.requires_grad_(requires_grad) for t in (a, b, s0)]


TORCH_BACKENDS = ["torch", "chunked"]


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
@pytest.mark.parametrize("block", [None, 2, 3])
@pytest.mark.parametrize("with_state", [False, True])
def test_torch_scans_equal_the_loop(backend, block, with_state):
    a, b, s0 = make(2, 37, 4, block, requires_grad=True)
    s0 = s0 if with_state else None
    results = {}
    for name in ("reference", backend):
        states, final = linear_scan(a, b, s0, backend=name)
        weights = torch.linspace(-1, 1, states.numel(), dtype=states.dtype).view_as(states)
        loss = (states * weights).sum() + final.square().sum()
        leaves = [a, b] + ([s0] if s0 is not None else [])
        results[name] = (states, final, torch.autograd.grad(loss, leaves))
    (s_ref, f_ref, g_ref), (s, f, g) = results["reference"], results[backend]
    torch.testing.assert_close(s, s_ref, **F64)
    torch.testing.assert_close(f, f_ref, **F64)
    torch.testing.assert_close(f, s[:, -1], atol=0, rtol=0)
    for mine, theirs in zip(g, g_ref):
        torch.testing.assert_close(mine, theirs, atol=1e-11, rtol=1e-11)


@settings(max_examples=20, deadline=None)
@given(
    steps=st.integers(1, 70),
    channels=st.integers(1, 3),
    block=st.sampled_from([None, 1, 2, 4]),
    seed=st.integers(0, 99),
)
def test_property_lengths_and_blocks(steps, channels, block, seed):
    a, b, s0 = make(2, steps, channels, block, seed)
    expected = linear_scan(a, b, s0, backend="reference")
    for backend in TORCH_BACKENDS:
        for mine, theirs in zip(linear_scan(a, b, s0, backend=backend), expected):
            torch.testing.assert_close(mine, theirs, **F64)


def test_half_precision_is_computed_in_float32():
    a, b, _ = make(1, 50, 3, None)
    states, final = linear_scan(a.bfloat16(), b.bfloat16(), backend="torch")
    assert states.dtype == torch.float32 and final.dtype == torch.float32
    expected, _ = linear_scan(a.bfloat16().double(), b.bfloat16().double(), backend="reference")
    torch.testing.assert_close(states.double(), expected, atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    a, b, s0 = make(2, 5, 3, None)
    with pytest.raises(TypeError, match="a must be a floating-point"):
        linear_scan(a.long(), b)
    with pytest.raises(ValueError, match=r"b must be \[B, T, D\]"):
        linear_scan(a[0, 0], b[0, 0])
    with pytest.raises(ValueError, match=r"a must be \[B, T, D\]"):
        linear_scan(a[:, :4], b)
    with pytest.raises(ValueError, match=r"a must be \[B, T, D, m, m\]"):
        linear_scan(a, b[..., None].expand(2, 5, 3, 2))
    with pytest.raises(ValueError, match="no time steps"):
        linear_scan(a[:, :0], b[:, :0])
    with pytest.raises(ValueError, match="initial_state must be"):
        linear_scan(a, b, s0[:, :2])
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        linear_scan(a, b, backend="magic")
