"""The operator conformance kit (`hf_seqplugins.testing.operators`) over every operator of every installed
architecture (built-in and third-party), one test per (operator, backend)."""

import pytest

from hf_seqplugins import load_plugins
from hf_seqplugins.testing.operators import FAIL, NOT_APPLICABLE, PASS, check_operator


def _operators():
    operators = {op.name: op for architecture in load_plugins().values() for op in architecture.config_class.operators}
    return [operators[name] for name in sorted(operators)]


CASES = [pytest.param(op, backend, id=f"{op.name}-{backend}") for op in _operators() for backend in op.backends]


def test_every_builtin_operator_is_checked():
    assert {"headwise_rnn", "linear_scan", "lti_ssm", "mlstm", "ssd"} <= {op.name for op in _operators()}


@pytest.mark.parametrize("operator,backend", CASES)
def test_operator_backend_conforms(operator, backend):
    checks = check_operator(operator, backends=[backend])
    failures = [f"[{c.case}] {c.name}: {c.detail}" for c in checks if c.status == FAIL]
    assert not failures, "\n".join(failures)
    passed = [c for c in checks if c.status == PASS]
    if not passed:
        reasons = sorted({c.detail for c in checks if c.status == NOT_APPLICABLE})
        pytest.skip(f"{operator.name}:{backend} cannot run here: {'; '.join(reasons)}")
