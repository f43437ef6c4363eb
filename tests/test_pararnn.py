"""ParaRNN: the Newton engine against the sequential loop (values and gradients, float64), its convergence
behaviour (exactness after k iterations, residual stop, fallback), the cells' explicit Jacobians against
autograd, a new cell written as a step only, and the Trainer logging. The LM contracts are in the conformance
suite (`seqp_pararnn`).

Tolerances: float64 engine vs loop 1e-12 (values) and 1e-10 (gradients); float32 documented below.
"""

import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

from hf_seqplugins.core.registry import load_plugins
from hf_seqplugins.kernels.linear_scan import OPERATOR as LINEAR_SCAN
from hf_seqplugins.kernels.linear_scan.newton import NewtonStatsCallback, _jacobian, newton_scan, sequential_scan
from hf_seqplugins.plugins.pararnn import CELLS, ParaCell, ParaGRUCell, ParaLSTMCell, SLSTMDiagCell, register_cell
from hf_seqplugins.testing import tiny_config

BACKENDS = [b for b in ("reference", "torch", "chunked", "triton") if b in LINEAR_SCAN.available_backends()]


def make_cell(cell_class, size=6, seed=0, scale=1.0):
    torch.manual_seed(seed)
    cell = cell_class(size).double()
    for parameter in cell.parameters():
        torch.nn.init.normal_(parameter, std=scale)
    return cell


def inputs(cell, batch=2, steps=40, seed=1):
    """Random pre-activations around the cell's initial bias, and a random initial state (sLSTM: n > 0)."""
    g = torch.Generator().manual_seed(seed)
    x = (
        torch.randn(batch, steps, cell.input_rows, cell.state_size, generator=g, dtype=torch.float64)
        + cell.initial_bias().double()
    )
    h0 = 0.5 * torch.randn(cell.initial_state(batch, "cpu", torch.float64).shape, generator=g, dtype=torch.float64)
    if isinstance(cell, SLSTMDiagCell):
        h0[..., 2] = h0[..., 2].abs() + 1  # the normaliser n of a state that has seen input
    return x.requires_grad_(), h0.requires_grad_()


@pytest.mark.parametrize("cell_class", [ParaGRUCell, ParaLSTMCell])
def test_explicit_jacobians_equal_autograd(cell_class):
    cell = make_cell(cell_class)
    x, h0 = inputs(cell)
    prev = torch.randn(*x.shape[:2], *h0.shape[1:], dtype=torch.float64)
    torch.testing.assert_close(cell.jacobian(prev, x), _jacobian(cell.step, prev, x, cell.block), atol=1e-14, rtol=0)


CELL_CASES = [
    (ParaGRUCell, True),
    (ParaGRUCell, False),
    (ParaLSTMCell, True),
    (ParaLSTMCell, False),
    (SLSTMDiagCell, False),
]
# the 4 x 4 blocks take ~40 s in Triton's interpreter: with the slow tests
ENGINE_CASES = [
    pytest.param(
        cell, explicit, backend, marks=[pytest.mark.slow] if (cell, backend) == (SLSTMDiagCell, "triton") else []
    )
    for cell, explicit in CELL_CASES
    for backend in BACKENDS
]


@pytest.mark.parametrize("cell_class,explicit,backend", ENGINE_CASES)
def test_newton_equals_the_loop_values_and_gradients(cell_class, explicit, backend):
    cell = make_cell(cell_class)
    x, h0 = inputs(cell)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, :7] = False  # left padding
    mask[0, 20:23] = False  # a gap: the state is carried over
    jacobian = cell.jacobian if explicit else None
    states, stats = newton_scan(
        cell.step,
        x,
        h0,
        block=cell.block,
        jacobian=jacobian,
        mask=mask,
        tolerance=1e-13,
        max_iterations=40,
        backend=backend,
    )
    expected = sequential_scan(cell.step, x, h0, mask, cell.block)
    assert stats.converged and not stats.fell_back and stats.iterations < 40
    torch.testing.assert_close(states, expected, atol=1e-12, rtol=0)
    weights = torch.linspace(-1, 1, expected.numel(), dtype=torch.float64).view_as(expected)
    leaves = [x, h0, *cell.parameters()]
    ours = torch.autograd.grad((states * weights).sum(), leaves)
    theirs = torch.autograd.grad((expected * weights).sum(), leaves)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, atol=1e-10, rtol=1e-10)


def test_after_k_iterations_the_first_k_states_are_exact():
    cell = make_cell(ParaGRUCell, scale=2.0)
    x, h0 = inputs(cell, steps=30)
    expected = sequential_scan(cell.step, x, h0)
    for k in (1, 3, 6):
        with pytest.warns(RuntimeWarning, match="did not converge"):
            states, stats = newton_scan(
                cell.step,
                x.detach(),
                h0.detach(),
                jacobian=cell.jacobian,
                max_iterations=k,
                tolerance=0.0,
                fallback=False,
            )
        assert stats.iterations == k and not stats.converged
        torch.testing.assert_close(states[:, :k], expected[:, :k].detach(), atol=1e-14, rtol=0)


def test_non_convergence_falls_back_to_the_loop_with_a_warning():
    cell = make_cell(ParaLSTMCell, scale=2.0)
    x, h0 = inputs(cell, steps=25)
    with pytest.warns(RuntimeWarning, match="falling back to the sequential loop"):
        states, stats = newton_scan(cell.step, x, h0, block=2, max_iterations=1, tolerance=1e-12)
    assert stats.fell_back and not stats.converged and stats.residual > 1e-12
    expected = sequential_scan(cell.step, x, h0, block=2)
    torch.testing.assert_close(states, expected, atol=0, rtol=0)
    (grad,) = torch.autograd.grad(states.sum(), x)
    torch.testing.assert_close(grad, torch.autograd.grad(expected.sum(), x)[0])


def test_float32_long_sequence_stays_close_to_the_float64_loop():
    """T=2048 at the default init: the documented float32 accuracy (max |error| <= 1e-4 of the unit-range states)."""
    model = AutoModelForCausalLM.from_config(tiny_config("seqp_pararnn", cell="gru", newton_tolerance=1e-5))
    mixer = model.model.layers[0].mixer
    hidden = torch.randn(1, 2048, 16)
    with torch.no_grad():
        x = mixer.preactivations(hidden)
        states, stats = newton_scan(
            mixer.cell.step,
            x,
            mixer.cell.initial_state(1, "cpu", torch.float32),
            jacobian=mixer.cell.jacobian,
            tolerance=1e-5,
        )
        expected = sequential_scan(mixer.cell.double().step, x.double(), torch.zeros(1, 16, dtype=torch.float64))
    assert stats.converged and stats.iterations <= 8
    assert (states.double() - expected).abs().max() < 1e-4


@pytest.mark.parametrize("cell", ["gru", "lstm_cifg", "slstm_diag"])
def test_parallel_and_sequential_models_agree_float64(cell):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_config("seqp_pararnn", cell=cell, newton_tolerance=1e-13, newton_max_iterations=50, initializer_range=0.3)
    ).double()
    ids = torch.randint(0, 32, (2, 24), generator=torch.Generator().manual_seed(3))
    runs = {}
    for mode in ("parallel", "sequential"):
        model.config.mode = mode
        model.zero_grad()
        out = model(ids, labels=ids)
        out.loss.backward()
        runs[mode] = (out.logits.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(runs["parallel"][0], runs["sequential"][0], atol=1e-11, rtol=0)
    for mine, theirs in zip(runs["parallel"][1], runs["sequential"][1]):
        torch.testing.assert_close(mine, theirs, atol=1e-10, rtol=1e-9)


class TanhCell(ParaCell):
    """A plain diagonal tanh RNN, defined by its step alone: h' = tanh(A h + x)."""

    input_rows = 1

    def step(self, h, x):
        return torch.tanh(self.A[0] * h + x[..., 0, :])


def test_a_new_cell_needs_only_its_step(monkeypatch):
    monkeypatch.setitem(CELLS, "tanh_demo", TanhCell)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_config("seqp_pararnn", cell="tanh_demo", initializer_range=0.3)
    ).eval()
    ids = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        parallel = model(ids).logits
        model.config.mode = "sequential"
        torch.testing.assert_close(parallel, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert model.model.layers[0].mixer.newton_stats.converged
    generated = model.generate(ids[:, :4], max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert generated.shape == (2, 9)


def test_register_cell_refuses_what_it_cannot_use():
    with pytest.raises(TypeError, match="ParaCell subclass"):
        register_cell("bad", object)
    with pytest.raises(ValueError, match="already registered"):
        register_cell("gru", TanhCell)


def test_trainer_logs_newton_iterations_and_residual(tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is in the `train` extra")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("seqp_pararnn"))
    rows = [[(start + t) % 5 for t in range(16)] for start in range(5)] * 4
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})
    )
    trainer.callback_handler.callbacks.insert(0, NewtonStatsCallback())
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3
    assert all(
        1 <= entry["newton_iterations"] <= 12 and entry["newton_residual"] <= 1e-6 and entry["newton_fallbacks"] == 0
        for entry in logged
    )


@pytest.mark.parametrize(
    "field,value",
    [
        ("cell", "transformer"),
        ("mode", "magic"),
        ("num_heads", 3),
        ("newton_max_iterations", 0),
        ("newton_tolerance", -1.0),
        ("state_size", 0),
    ],
)
def test_invalid_fields_are_named(field, value):
    with pytest.raises(ValueError, match=field if field != "num_heads" else "divisible by num_heads"):
        AutoConfig.for_model("seqp_pararnn", **{**load_plugins()["seqp_pararnn"].tiny_config, field: value})


def test_no_warning_at_the_default_settings():
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("seqp_pararnn", vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=64)
    )
    ids = torch.randint(0, 64, (2, 256))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model(ids, labels=ids).loss.backward()
