"""Synthetic probes: shapes, seeding, and that the labelled answers are what the task defines."""
import pytest

from hf_seqplugins.data import byte_tokenizer
from hf_seqplugins.tasks import IGNORE, TASKS, mqar, modular_counting, passkey, selective_copying


@pytest.mark.parametrize("name", sorted(TASKS))
def test_rows_are_seeded_and_of_one_length(name):
    first, again, other = TASKS[name](num_examples=4, seed=1), TASKS[name](num_examples=4, seed=1), TASKS[name](num_examples=4, seed=2)
    assert first["input_ids"] == again["input_ids"] and first["input_ids"] != other["input_ids"]
    assert len({len(row) for row in first["input_ids"]}) == 1
    for tokens, labels in zip(first["input_ids"], first["labels"]):
        assert len(tokens) == len(labels) and any(label != IGNORE for label in labels)
        assert all(label in (IGNORE, token) for token, label in zip(tokens, labels))


def test_mqar_answers_are_the_paired_values():
    row = mqar(num_examples=1, num_pairs=6, num_queries=3)[0]
    tokens, labels = row["input_ids"], row["labels"]
    pairs = dict(zip(tokens[0:12:2], tokens[1:12:2]))
    answers = [i for i, label in enumerate(labels) if label != IGNORE]
    assert len(answers) == 3 and all(pairs[tokens[i - 1]] == tokens[i] for i in answers)


def test_selective_copying_answers_are_the_symbols_in_order():
    row = selective_copying(num_examples=1, length=20, num_data=5)[0]
    tokens = row["input_ids"]
    assert tokens[20] == 1 and tokens[21:] == [t for t in tokens[:20] if t >= 2]


def test_modular_counting_answer_is_the_sum_mod_m():
    for row in modular_counting(num_examples=5, length=9, modulus=3):
        tokens = row["input_ids"]
        assert tokens[-2] == 3 and tokens[-1] == 4 + sum(tokens[:9]) % 3


def test_passkey_answer_is_the_hidden_number():
    row = passkey(num_examples=1, length=300)[0]
    text = byte_tokenizer().decode(row["input_ids"])
    key = text[-5:]
    assert len(row["input_ids"]) == 300 and f"The passkey is {key}." in text and key.isdigit()
    with pytest.raises(ValueError, match="too short"):
        passkey(num_examples=1, length=20)
