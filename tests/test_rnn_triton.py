"""The `triton` backend of `headwise_rnn`, what is specific to it: against the `reference` recurrence
(outputs, final states, gradients of every input, every cell) under masks with gaps, in float32, without bias
or initial state, sLSTM edge cases, several batch tiles, fully padded rows, the inference path, half
precision, refusals. The generic contract checks (float64 against the reference with gradients, single steps,
splits, left padding, packed rows, poisoned buffers, bfloat16) live in the operator conformance kit
(tests/test_operator_conformance.py); a one-token call runs the reference step whichever backend is named.

Without CUDA the kernels run in Triton's interpreter (about 1 ms per program step), so sizes stay tiny.
Tolerances: float32 atol 1e-5 / rtol 1e-4 (observed errors are below 1e-6); float64 atol 1e-12 / rtol 1e-10.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must precede the first import of the kernel module: triton.jit reads it when the kernels are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="Triton is in the `triton` extra (installed by the dev extra CI uses)")

from hf_seqplugins.core.backends import BackendUnavailableError  # noqa: E402
from hf_seqplugins.kernels.rnn import CELLS, NUM_GATES, headwise_rnn, state_shapes  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCES = {torch.float32: {"atol": 1e-5, "rtol": 1e-4}, torch.float64: {"atol": 1e-12, "rtol": 1e-10}}


def make_inputs(
    cell, batch, steps, heads, head_dim, *, seed, dtype=torch.float32, with_bias=True, with_state=True, gate_scale=1.0
):
    """Random (gates_x, recurrent_weight, recurrent_bias, initial_state) for `cell`; sLSTM normalizers are
    positive except for every third feature, which is zero to exercise the elementwise first-step rule."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    gates = NUM_GATES[cell]
    gates_x = randn(batch, steps, gates, heads, head_dim) * gate_scale
    recurrent_weight = randn(gates, heads, head_dim, head_dim) / head_dim**0.5
    recurrent_bias = randn(gates, heads, head_dim) * 0.5 if with_bias else None
    initial_state = None
    if with_state:
        initial_state = [randn(*shape) for shape in state_shapes(cell, batch, heads, head_dim)]
        if cell == "slstm":
            normalizer = torch.rand(batch, heads, head_dim, generator=generator, dtype=dtype) + 0.5
            normalizer[..., ::3] = 0.0
            initial_state[2] = normalizer
        initial_state = tuple(initial_state)
    return gates_x, recurrent_weight, recurrent_bias, initial_state


def to_device(inputs):
    gates_x, recurrent_weight, recurrent_bias, initial_state = inputs
    return (
        gates_x.to(DEVICE),
        recurrent_weight.to(DEVICE),
        None if recurrent_bias is None else recurrent_bias.to(DEVICE),
        None if initial_state is None else tuple(s.to(DEVICE) for s in initial_state),
    )


def run(backend, cell, inputs, mask=None, normalizer_clamp=True, seed=1234):
    """Outputs, final state and the gradients (by input name) of a fixed random weighted sum of both."""
    gates_x, recurrent_weight, recurrent_bias, initial_state = inputs
    names = ["gates_x", "recurrent_weight", "recurrent_bias"] + [
        f"initial_state[{k}]" for k in range(len(initial_state or ()))
    ]
    tensors = [gates_x, recurrent_weight, recurrent_bias, *(initial_state or ())]
    leaves = [None if t is None else t.to(DEVICE).requires_grad_() for t in tensors]
    initial = None if initial_state is None else tuple(leaves[3:])
    outputs, final_state = headwise_rnn(
        cell,
        leaves[0],
        leaves[1],
        leaves[2],
        initial,
        None if mask is None else mask.to(DEVICE),
        normalizer_clamp=normalizer_clamp,
        backend=backend,
    )
    generator = torch.Generator().manual_seed(seed)
    loss = sum(
        (result * torch.randn(result.shape, generator=generator, dtype=result.dtype).to(DEVICE)).sum()
        for result in (outputs, *final_state)
    )
    wanted = [(name, leaf) for name, leaf in zip(names, leaves) if leaf is not None]
    grads = torch.autograd.grad(loss, [leaf for _, leaf in wanted])
    return outputs.detach(), tuple(s.detach() for s in final_state), {name: g for (name, _), g in zip(wanted, grads)}


def assert_matches_reference(cell, inputs, mask=None, normalizer_clamp=True):
    dtype = inputs[0].dtype
    expected = run("reference", cell, inputs, mask, normalizer_clamp)
    got = run("triton", cell, inputs, mask, normalizer_clamp)
    tolerance = TOLERANCES[dtype]
    assert got[0].dtype == dtype
    torch.testing.assert_close(got[0], expected[0], **tolerance, msg=lambda m: f"outputs: {m}")
    assert len(got[1]) == len(expected[1])
    for k, (state, reference_state) in enumerate(zip(got[1], expected[1])):
        torch.testing.assert_close(state, reference_state, **tolerance, msg=lambda m, k=k: f"final_state[{k}]: {m}")
    assert got[2].keys() == expected[2].keys()
    for name, grad in got[2].items():
        torch.testing.assert_close(
            grad, expected[2][name], **tolerance, msg=lambda m, name=name: f"grad of {name}: {m}"
        )
    return got


def padding_mask(batch, steps):
    """Left padding in row 0, a gap in the last row, row 1 (if any) unpadded."""
    mask = torch.ones(batch, steps, dtype=torch.bool)
    mask[0, : steps // 2] = False
    mask[-1, steps - 2] = False
    return mask


@pytest.mark.parametrize("cell", CELLS)
def test_masked_with_initial_state(cell):
    inputs = make_inputs(cell, batch=3, steps=7, heads=2, head_dim=6, seed=0)
    assert_matches_reference(cell, inputs, padding_mask(3, 7))


@pytest.mark.parametrize("cell", CELLS)
def test_zero_state_without_bias_or_mask(cell):
    inputs = make_inputs(cell, batch=2, steps=5, heads=2, head_dim=5, seed=1, with_bias=False, with_state=False)
    assert_matches_reference(cell, inputs)


@pytest.mark.parametrize("cell", CELLS)
def test_float64(cell):
    inputs = make_inputs(cell, batch=2, steps=4, heads=2, head_dim=3, seed=3, dtype=torch.float64)
    assert_matches_reference(cell, inputs, padding_mask(2, 4))


@pytest.mark.parametrize("normalizer_clamp", [True, False])
def test_slstm_large_preactivations(normalizer_clamp):
    inputs = make_inputs("slstm", batch=2, steps=12, heads=2, head_dim=4, seed=4, gate_scale=30.0)
    outputs, final_state, grads = assert_matches_reference("slstm", inputs, padding_mask(2, 12), normalizer_clamp)
    assert torch.isfinite(outputs).all() and all(torch.isfinite(g).all() for g in grads.values())
    assert final_state[3].abs().max() > 20, "the stabiliser m should track the large gate pre-activations"


def test_slstm_normalizer_clamp_is_honoured():
    gates_x, recurrent_weight, recurrent_bias, (h, c, _, m) = make_inputs(
        "slstm", batch=2, steps=3, heads=1, head_dim=4, seed=5
    )
    small_normalizer = torch.full_like(h, 0.05)
    # Input gates far below the forget term, so n_new ~= f * n stays below 1 without the clamp; a weak
    # recurrence keeps h = o c / n (large for small n) from moving the pre-activations much.
    gates_x[:, :, 0] = -20.0
    gates_x[:, :, 1] = 20.0
    inputs = (gates_x, recurrent_weight * 0.01, recurrent_bias, (h, c, small_normalizer, m))
    clamped = assert_matches_reference("slstm", inputs, normalizer_clamp=True)
    unclamped = assert_matches_reference("slstm", inputs, normalizer_clamp=False)
    assert (clamped[1][2] >= 1).all()
    assert (unclamped[1][2] < 1).all()


@pytest.mark.parametrize("cell", ["gru", "slstm"])
def test_several_batch_tiles(cell):
    # 18 rows span two 16-row batch tiles, so the per-tile partial dR and db are summed.
    inputs = make_inputs(cell, batch=18, steps=3, heads=1, head_dim=3, seed=6)
    assert_matches_reference(cell, inputs, padding_mask(18, 3))


@pytest.mark.parametrize("cell", ["lstm", "slstm"])
def test_fully_padded_row_keeps_initial_state(cell):
    inputs = make_inputs(cell, batch=2, steps=4, heads=1, head_dim=3, seed=7)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1] = False
    outputs, final_state, grads = assert_matches_reference(cell, inputs, mask)
    initial_state = inputs[3]
    for state, initial in zip(final_state, initial_state):
        torch.testing.assert_close(state[1].cpu(), initial[1], rtol=0, atol=0)
    torch.testing.assert_close(outputs[1].cpu(), initial_state[0][1].expand(4, -1, -1), rtol=0, atol=0)
    assert (grads["gates_x"][1] == 0).all()


@pytest.mark.parametrize("cell", ["elman_tanh", "gru", "slstm"])
def test_inference_path_without_grad(cell):
    args = to_device(make_inputs(cell, batch=2, steps=5, heads=2, head_dim=6, seed=8))
    mask = padding_mask(2, 5).to(DEVICE)
    with torch.no_grad():
        outputs, final_state = headwise_rnn(cell, *args, mask, backend="triton")
    expected_outputs, expected_state = headwise_rnn(cell, *args, mask, backend="reference")
    assert not outputs.requires_grad
    torch.testing.assert_close(outputs, expected_outputs, **TOLERANCES[torch.float32])
    for state, expected in zip(final_state, expected_state):
        torch.testing.assert_close(state, expected, **TOLERANCES[torch.float32])


def test_half_precision_inputs_keep_float32_states():
    gates_x, *others = to_device(make_inputs("lstm", batch=2, steps=3, heads=1, head_dim=4, seed=9))
    args = (gates_x.half(), *others)
    with torch.no_grad():
        outputs, final_state = headwise_rnn("lstm", *args, backend="triton")
        expected_outputs, expected_state = headwise_rnn("lstm", *args, backend="reference")
    assert outputs.dtype == torch.float16
    assert all(state.dtype == torch.float32 for state in final_state)
    torch.testing.assert_close(outputs, expected_outputs, atol=1e-3, rtol=1e-3)
    for state, expected in zip(final_state, expected_state):
        torch.testing.assert_close(state, expected, **TOLERANCES[torch.float32])


def test_projection_is_refused_with_a_pointer_to_torch():
    gates_x, _, _, _ = make_inputs("lstm", batch=1, steps=2, heads=1, head_dim=4, seed=10)
    recurrent_weight = torch.randn(4, 1, 4, 3)
    projection = torch.randn(1, 3, 4)
    with pytest.raises(BackendUnavailableError, match=r"proj_size=3.*'torch'"):
        headwise_rnn(
            "lstm", gates_x.to(DEVICE), recurrent_weight.to(DEVICE), projection=projection.to(DEVICE), backend="triton"
        )


def test_head_size_above_limit_is_refused():
    gates_x = torch.randn(1, 2, 1, 1, 65, device=DEVICE)
    recurrent_weight = torch.randn(1, 1, 65, 65, device=DEVICE)
    with pytest.raises(BackendUnavailableError, match="head size 65 exceeds 64"):
        headwise_rnn("elman_tanh", gates_x, recurrent_weight, backend="triton")


def test_cpu_inputs_need_the_interpreter_from_the_first_import(monkeypatch):
    from hf_seqplugins.kernels.rnn import triton_impl

    monkeypatch.setattr(triton_impl, "INTERPRETED", False)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET was not 1"):
        headwise_rnn("gru", torch.randn(1, 2, 3, 1, 4), torch.randn(3, 1, 4, 4), backend="triton")
