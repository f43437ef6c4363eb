"""The operator conformance kit itself: a correct toy operator passes every check, and each kind of broken
backend is caught by the check meant for it (so a pass means something)."""

import pytest
import torch

from hf_seqplugins import Operator
from hf_seqplugins.core.backends import OPERATORS
from hf_seqplugins.testing.operators import FAIL, PASS, assert_operator_conforms, check_operator


def loop(x, decay, initial_state, mask, *, read_padding=False, keep_state=False):
    """h_t = decay * h_{t-1} + x_t per channel; x `[B, T, D]`, decay `[D]`, state `[B, D]`."""
    h = initial_state
    outputs = []
    for t in range(x.shape[1]):
        new = decay * h + x[:, t]
        if keep_state:
            new = new.detach()
        h = new if mask is None or read_padding else torch.where(mask[:, t, None], new, h)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


def validate(x, decay, initial_state=None, mask=None):
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], x.shape[2])
    return (x, decay, initial_state, mask), {}


def example(batch, length, dtype, generator):
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    return {
        "x": randn(batch, length, 3),
        "decay": torch.tensor([0.5, -0.9, 0.99], dtype=dtype),
        "initial_state": randn(batch, 3),
    }


def failed_checks(operator) -> set[str]:
    return {c.name for c in check_operator(operator, backends=["torch"]) if c.status == FAIL}


def ignores_initial_state(x, decay, initial_state, mask):
    return loop(x, decay, torch.zeros_like(initial_state), mask)


def reads_padding(x, decay, initial_state, mask):
    return loop(x, decay, initial_state, mask, read_padding=True)


def stale_final_state(x, decay, initial_state, mask):
    outputs, _ = loop(x, decay, initial_state, mask)
    return outputs, outputs[:, 0]


def unwritten_output(x, decay, initial_state, mask):
    outputs, state = loop(x, decay, initial_state, mask)
    buffer = torch.empty_like(outputs)
    buffer[:, :-1] = outputs[:, :-1]  # forgets the last step
    return buffer, state


def no_gradient_through_time(x, decay, initial_state, mask):
    return loop(x, decay, initial_state, mask, keep_state=True)


def low_precision(x, decay, initial_state, mask):
    outputs, state = loop(x.float(), decay.float(), initial_state.float(), mask)
    return outputs.to(x.dtype), state.to(x.dtype)


@pytest.fixture
def make_toy():
    made = []

    def make(fast):
        name = f"toy_{fast.__name__}"
        operator = Operator(
            name=name,
            backends={"reference": lambda: loop, "torch": lambda: fast},
            validate=validate,
            sequences=("x",),
            examples={"toy": example},
        )
        made.append(name)
        return operator

    yield make
    for name in made:
        OPERATORS.pop(name, None)


def test_a_correct_operator_passes_every_check(make_toy):
    operator = make_toy(loop)
    checks = check_operator(operator)
    assert {c.status for c in checks} == {PASS}
    assert {c.name for c in checks} >= {
        "reference",
        "single_step",
        "split",
        "left_padding",
        "packed",
        "poisoned_buffers",
        "bfloat16",
    }
    assert_operator_conforms(operator)


@pytest.mark.parametrize(
    "broken,caught_by",
    [
        (ignores_initial_state, {"reference", "split"}),
        (reads_padding, {"left_padding"}),
        (stale_final_state, {"reference", "split"}),
        (unwritten_output, {"poisoned_buffers"}),
        (no_gradient_through_time, {"reference"}),
        (low_precision, {"reference"}),
    ],
)
def test_each_defect_is_caught_by_its_check(make_toy, broken, caught_by):
    operator = make_toy(broken)
    assert caught_by <= failed_checks(operator)
    with pytest.raises(AssertionError, match=operator.name):
        assert_operator_conforms(operator)


def test_a_packed_row_is_checked_against_each_sequence_alone(make_toy):
    """A backend that takes `resets` natively but ignores them fails `packed` (the others run it segment by segment)."""

    def ignores_resets(x, decay, initial_state, mask, resets=None):
        return loop(x, decay, initial_state, mask)

    operator = make_toy(ignores_resets)
    operator.native_resets = frozenset({"torch"})
    assert "packed" in failed_checks(operator)


def test_an_operator_without_examples_fails_the_kit(make_toy):
    operator = make_toy(loop)
    operator.examples = {}
    assert [c.status for c in check_operator(operator)] == [FAIL]
