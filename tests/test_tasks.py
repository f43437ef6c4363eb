"""Synthetic probes: shapes, seeding, and that the labelled answers are what the task defines."""
import pytest

from hf_seqplugins.data import byte_tokenizer
from hf_seqplugins.dfa import DFA, minimize, unique_dfas
from hf_seqplugins.tasks import (
    IGNORE,
    REGBENCH_PAD,
    REGBENCH_SEPARATOR,
    TASKS,
    modular_counting,
    mqar,
    passkey,
    regbench,
    selective_copying,
    splits,
    vocab_size,
)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_rows_are_seeded_and_of_one_length(name):
    first, again, other = TASKS[name](num_examples=4, seed=1), TASKS[name](num_examples=4, seed=1), TASKS[name](num_examples=4, seed=2)
    assert first["input_ids"] == again["input_ids"] and first["input_ids"] != other["input_ids"]
    assert len({len(row) for row in first["input_ids"]}) == 1
    assert max(max(row) for row in first["input_ids"]) < vocab_size(first), "the recorded vocabulary covers every id"
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


def test_regbench_strings_are_walks_of_the_rows_dfa():
    data = regbench(num_examples=6, length=200, seed=3)
    for tokens, labels, table in zip(data["input_ids"], data["labels"], data["dfa"]):
        dfa = DFA.from_table(table)
        real = tokens[: tokens.index(REGBENCH_PAD)] if REGBENCH_PAD in tokens else tokens
        strings = [s for s in " ".join(map(str, real)).split(str(REGBENCH_SEPARATOR))]
        assert len(strings) > 1 and all(dfa.accepts([int(t) for t in s.split()]) for s in strings)
        assert all((label == IGNORE) == (token >= REGBENCH_SEPARATOR) for token, label in zip(tokens, labels))
        assert len(tokens) == 200


def test_regbench_splits_use_disjoint_dfas():
    data = splits("regbench", num_train=40, num_test=20, length=32)
    train, test = ({str(t) for t in data[name]["dfa"]} for name in ("train", "test"))
    assert len(train) == 40 and len(test) == 20 and not train & test


def test_minimize_merges_equivalent_states_and_drops_unreachable_ones():
    # 0 and 2 both lead to 1 on symbol 0 and nothing else; 5 is unreachable
    dfa = DFA({(0, 0): 1, (1, 1): 2, (2, 0): 1, (5, 3): 0})
    assert minimize(dfa).table() == [[0, 0, 1], [1, 1, 0]]
    assert minimize(DFA({(0, 0): 1, (1, 0): 2, (2, 0): 0})).table() == [[0, 0, 0]]


def test_random_dfas_are_minimal_and_within_the_spec_sizes():
    for dfa in unique_dfas(30, seed=5):
        assert minimize(dfa).table() == dfa.table()
        states = {s for (s, _) in dfa.transitions}
        assert 1 <= len(states) <= 12 and all(1 <= len(dfa.outgoing(s)) <= 3 for s in states)
