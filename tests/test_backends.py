"""Backend selection: config request, environment variable, context manager, clear errors."""

import pytest
import torch

from hf_seqplugins import BackendUnavailableError, use_backend
from hf_seqplugins.core.backends import ENV_VAR, OPERATORS, Operator
from hf_seqplugins.kernels.rnn import headwise_rnn

OP = OPERATORS["headwise_rnn"]
CPU = torch.device("cpu")


def test_auto_is_torch_on_cpu():
    assert OP.resolve("auto", CPU) == "torch"
    assert OP.resolve(None, CPU) == "torch"


def test_explicit_request_is_honoured():
    assert OP.resolve("reference", CPU) == "reference"


def test_unknown_backend_lists_the_choices():
    with pytest.raises(BackendUnavailableError, match=r"unknown backend 'cuda_fused'.*'reference'.*'torch'"):
        OP.resolve("cuda_fused", CPU)


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="CUDA.*TRITON_INTERPRET"):
        OP.resolve("triton", CPU)


def test_environment_variable_overrides_the_request(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "reference")
    assert OP.resolve("torch", CPU) == "reference"
    monkeypatch.setenv(ENV_VAR, "torch,headwise_rnn:reference")
    assert OP.resolve("auto", CPU) == "reference"
    monkeypatch.setenv(ENV_VAR, "other_op:reference")
    assert OP.resolve("auto", CPU) == "torch"


def test_context_manager_overrides_everything_and_restores(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    with use_backend("reference"):
        assert OP.resolve("torch", CPU) == "reference"
        with use_backend(headwise_rnn="torch"):
            assert OP.resolve("reference", CPU) == "torch"
        assert OP.resolve("torch", CPU) == "reference"
    assert OP.resolve("reference", CPU) == "torch"


def test_context_manager_choice_reaches_the_kernel(monkeypatch):
    calls = []
    reference = OP.implementation("reference")
    monkeypatch.setitem(OP._loaded, "reference", lambda *a, **k: calls.append(1) or reference(*a, **k))
    gates = torch.randn(1, 3, 1, 1, 2)
    with use_backend("reference"):
        headwise_rnn("elman_tanh", gates, torch.randn(1, 1, 2, 2))
    assert calls == [1]


def test_an_operator_must_have_reference_and_torch():
    with pytest.raises(ValueError, match="reference"):
        Operator(
            name="incomplete",
            backends={"torch": lambda: None},
            validate=lambda x, initial_state, mask: ((), {}),
            sequences=("x",),
        )


def test_auto_passes_over_a_backend_that_refuses_the_inputs():
    gates, weight = torch.randn(1, 2, 4, 1, 3), torch.randn(4, 1, 3, 2)
    args, kwargs = OP.validate("lstm", gates, weight, projection=torch.randn(1, 2, 3))
    assert OP.resolve("auto", torch.device("cuda"), args, kwargs) == "torch"
    with pytest.raises(BackendUnavailableError, match="proj_size=2"):
        OP.resolve("triton", CPU, args, kwargs)


def test_auto_takes_triton_on_cuda_for_inputs_it_supports():
    args, kwargs = OP.validate("gru", torch.randn(1, 2, 3, 1, 4), torch.randn(3, 1, 4, 4))
    assert OP.resolve("auto", torch.device("cuda"), args, kwargs) == "triton"
