"""Synthetic probes: shapes, seeding, and that the labelled answers are what the task defines."""

import math
import statistics
from collections import Counter

import pytest

from hf_seqplugins.app.data import byte_tokenizer
from hf_seqplugins.app.dfa import DFA, minimize, unique_dfas
from hf_seqplugins.app.recall import answer_spans
from hf_seqplugins.app.tasks import (
    ADDITION_EQUALS,
    ADDITION_PLUS,
    ADDITION_VOCAB,
    CLASSIFICATION_TASKS,
    COPY_SEPARATOR,
    IGNORE,
    LISTOPS_PAD,
    LISTOPS_VOCAB,
    REGBENCH_PAD,
    REGBENCH_SEPARATOR,
    TASKS,
    addition,
    copy,
    listops,
    modular_counting,
    mqar,
    num_labels,
    pad_token_id,
    passkey,
    regbench,
    reverse,
    selective_copying,
    splits,
    vocab_size,
)


@pytest.mark.parametrize("name", sorted(set(TASKS) - CLASSIFICATION_TASKS))
def test_rows_are_seeded_and_of_one_length(name):
    first, again, other = (
        TASKS[name](num_examples=4, seed=1),
        TASKS[name](num_examples=4, seed=1),
        TASKS[name](num_examples=4, seed=2),
    )
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


LISTOPS_OPERATIONS = {
    "[MAX": max,
    "[MIN": min,
    "[MED": lambda values: math.floor(statistics.median(values)),
    "[SM": lambda values: sum(values) % 10,
}


def parse_listops(words: list[str]) -> tuple[int, int, list[int]]:
    """Evaluate a ListOps expression written as words; `(value, nesting depth, argument counts)`. Fails on anything
    malformed."""
    stack = [[]]
    depth, counts = 0, []
    for word in words:
        if word in LISTOPS_OPERATIONS:
            stack.append([word])
            depth = max(depth, len(stack) - 1)
        elif word == "]":
            operator, *values = stack.pop()
            counts.append(len(values))
            stack[-1].append(LISTOPS_OPERATIONS[operator](values))
        else:
            stack[-1].append(int(word))
    assert len(stack) == 1 and len(stack[0]) == 1, f"not one complete expression: {' '.join(words)}"
    return stack[0][0], depth, counts


def test_listops_reference_evaluator():
    assert parse_listops("[MAX 4 3 [MIN 2 3 ] 1 0 ]".split())[0] == 4
    assert parse_listops("[MED 2 5 ]".split())[0] == 3 and parse_listops("[MED 7 1 4 ]".split())[0] == 4
    assert parse_listops("[SM 9 8 [MAX 1 7 ] ]".split()) == (4, 2, [2, 3])


@pytest.mark.parametrize(
    "length, max_depth, max_args", [(16, 2, 3), (64, 3, 5), (64, 1, 10), (600, 10, 10), (1500, 4, 4)]
)
def test_listops_labels_are_the_expression_values(length, max_depth, max_args):
    data = listops(num_examples=40, length=length, max_depth=max_depth, max_args=max_args, seed=7)
    filled = []
    for tokens, mask, label in zip(data["input_ids"], data["attention_mask"], data["labels"]):
        assert len(tokens) == len(mask) == length
        real = sum(mask)
        assert mask == [1] * real + [0] * (length - real), "padding is on the right"
        assert tokens[real:] == [LISTOPS_PAD] * (length - real) and LISTOPS_PAD not in tokens[:real]
        value, depth, counts = parse_listops([LISTOPS_VOCAB[token] for token in tokens[:real]])
        assert value == label and 1 <= depth <= max_depth and all(2 <= count <= max_args for count in counts)
        filled.append(real)
    most = 1
    for _ in range(max_depth):
        most = 2 + max_args * most
    assert statistics.mean(filled) >= 0.6 * min(length, most), (
        "expressions fill a good part of the row (or of what the limits allow)"
    )


def test_listops_columns_vocabulary_and_balanced_labels():
    data = listops(num_examples=1000, length=32, seed=3)
    assert vocab_size(data) == len(LISTOPS_VOCAB) == 16 and num_labels(data) == 10 and pad_token_id(data) == LISTOPS_PAD
    assert LISTOPS_VOCAB[:10] == tuple("0123456789") and LISTOPS_VOCAB[10:] == (
        "[MAX",
        "[MIN",
        "[MED",
        "[SM",
        "]",
        "<pad>",
    )
    assert set(data.column_names) == {"input_ids", "attention_mask", "labels"}
    counts = Counter(data["labels"])
    assert sorted(counts) == list(range(10)) and all(70 <= n <= 130 for n in counts.values()), counts
    operators = Counter(token for row in data["input_ids"] for token in row if 10 <= token <= 13)
    assert min(operators.values()) > 0.2 * sum(operators.values()), "every operator is used about equally"


def test_listops_is_seeded_and_split():
    first, again, other = (listops(num_examples=8, length=128, seed=seed) for seed in (1, 1, 2))
    assert first["input_ids"] == again["input_ids"] and first["labels"] == again["labels"]
    assert first["input_ids"] != other["input_ids"]
    data = splits("listops", num_train=20, num_test=10, length=48)
    assert (
        len(data["train"]) == 20
        and len(data["test"]) == 10
        and data["train"]["input_ids"][:10] != data["test"]["input_ids"]
    )
    assert {len(row) for split in data.values() for row in split["input_ids"]} == {48}
    assert "listops" in CLASSIFICATION_TASKS and num_labels(mqar(num_examples=2)) is None


@pytest.mark.parametrize(
    "argument, value", [("num_examples", 0), ("length", 3), ("max_depth", 0), ("max_args", 1), ("length", 64.0)]
)
def test_listops_refuses_invalid_arguments(argument, value):
    with pytest.raises(ValueError, match=f"{argument} must be an integer >= "):
        listops(**{"num_examples": 2, "length": 32, argument: value})


def test_copy_and_reverse_answers_are_the_string_and_its_reverse():
    copies = copy(num_examples=20, length=7, num_symbols=5, seed=4)
    reverses = reverse(num_examples=20, length=7, seed=4)
    assert vocab_size(copies) == 6 and vocab_size(reverses) == 9
    for row in copies:
        tokens, labels = row["input_ids"], row["labels"]
        assert len(tokens) == 15 and tokens[7] == COPY_SEPARATOR and tokens[8:] == tokens[:7]
        assert all(1 <= t <= 5 for t in tokens[:7]) and labels == [IGNORE] * 8 + tokens[:7]
        assert answer_spans(labels) == [(8, 15)], "one answer: recall.recall_accuracy scores the whole copy"
    for row in reverses:
        tokens, labels = row["input_ids"], row["labels"]
        assert tokens[7] == COPY_SEPARATOR and tokens[8:] == tokens[6::-1] and labels == [IGNORE] * 8 + tokens[8:]
    same_strings = reverse(num_examples=20, length=7, num_symbols=5, seed=4)
    assert [row[:7] for row in same_strings["input_ids"]] == [row[:7] for row in copies["input_ids"]]


def decode_number(digits: list[int], least_significant_first: bool = True) -> int:
    return int("".join(map(str, digits[::-1] if least_significant_first else digits)))


@pytest.mark.parametrize("least_significant_first", [True, False])
def test_addition_answer_is_the_sum_with_every_carry(least_significant_first):
    length = 4
    data = addition(num_examples=600, length=length, least_significant_first=least_significant_first, seed=5)
    names = data.features["input_ids"].feature
    carried_into, final_carries, leading_zeros = set(), 0, 0
    for tokens, labels in zip(data["input_ids"], data["labels"]):
        assert len(tokens) == 3 * length + 3
        text = "".join(names.int2str(tokens))
        a, b, s = text[:length], text[length + 1 : 2 * length + 1], text[2 * length + 2 :]
        assert text[length] == "+" and text[2 * length + 1] == "=" and len(s) == length + 1 and s.isdigit()
        if least_significant_first:
            a, b, s = a[::-1], b[::-1], s[::-1]
        assert int(a) + int(b) == int(s), text
        assert labels == [IGNORE] * (2 * length + 2) + tokens[2 * length + 2 :]
        # a carry into digit i (counted from the least significant): the low i digits overflow
        carried_into |= {i for i in range(1, length + 1) if int(a[-i:]) + int(b[-i:]) >= 10**i}
        final_carries += s[0] == "1"
        leading_zeros += a[0] == "0"
    assert carried_into == set(range(1, length + 1)), "carries into every position, the final carry included"
    assert final_carries > 0 and leading_zeros > 0, "leading zeros are allowed (uniform digits)"
    assert decode_number([3, 2, 1]) == 123 == decode_number([1, 2, 3], False)


def test_addition_of_long_numbers_and_its_token_ids():
    row = addition(num_examples=1, length=300, seed=2)[0]
    tokens = row["input_ids"]
    assert tokens[300] == ADDITION_PLUS == 10 and tokens[601] == ADDITION_EQUALS == 11
    assert ADDITION_VOCAB == (*"0123456789", "+", "=")
    first, second, total = tokens[:300], tokens[301:601], tokens[602:]
    assert decode_number(first) + decode_number(second) == decode_number(total) and len(total) == 301


@pytest.mark.parametrize(
    "make, kwargs",
    [(copy, {}), (reverse, {}), (copy, {"num_symbols": 3}), (addition, {}), (addition, {"seq2seq": True})],
)
def test_vocabulary_is_the_same_at_every_length(make, kwargs):
    short, long = make(num_examples=8, length=2, **kwargs), make(num_examples=8, length=40, **kwargs)
    assert vocab_size(short) == vocab_size(long) and short.features == long.features
    assert max(max(row) for row in long["input_ids"]) < vocab_size(short)
    assert pad_token_id(short) is None


def test_seq2seq_rows_are_source_and_target_of_the_causal_rows():
    for make, source_length, target_length in ((copy, 6, 6), (reverse, 6, 6), (addition, 13, 7)):
        causal, pairs = make(num_examples=10, length=6, seed=3), make(num_examples=10, length=6, seq2seq=True, seed=3)
        assert vocab_size(causal) == vocab_size(pairs) and set(pairs.column_names) == {"input_ids", "labels"}
        for tokens, (source, target) in zip(causal["input_ids"], zip(pairs["input_ids"], pairs["labels"])):
            assert len(source) == source_length and len(target) == target_length and IGNORE not in target
            assert tokens == [*source, COPY_SEPARATOR if make is not addition else ADDITION_EQUALS, *target]
    source, target = (reverse(num_examples=1, length=5, seq2seq=True)[0][key] for key in ("input_ids", "labels"))
    assert target == source[::-1]
    row = addition(num_examples=1, length=5, seq2seq=True)[0]
    assert decode_number(row["input_ids"][:5]) + decode_number(row["input_ids"][6:]) == decode_number(row["labels"])


@pytest.mark.parametrize(
    "make, argument, value",
    [
        (copy, "length", 0),
        (reverse, "length", -1),
        (addition, "length", 0),
        (addition, "length", 2.0),
        (copy, "num_symbols", 1),
        (reverse, "num_symbols", 0),
        (copy, "num_examples", 0),
        (addition, "num_examples", 0),
    ],
)
def test_algorithmic_tasks_refuse_invalid_arguments(make, argument, value):
    with pytest.raises(ValueError, match=f"{make.__name__}: {argument} must be an integer >= "):
        make(**{"num_examples": 2, argument: value})


def test_algorithmic_tasks_are_seeded_and_split():
    for make in (copy, reverse, addition):
        first, again, other = (make(num_examples=8, length=5, seed=seed) for seed in (1, 1, 2))
        assert first["input_ids"] == again["input_ids"] and first["input_ids"] != other["input_ids"]
    data = splits("addition", num_train=30, num_test=10, length=5)
    assert len(data["train"]) == 30 and len(data["test"]) == 10
    assert {len(row) for split in data.values() for row in split["input_ids"]} == {18}
    assert data["train"]["input_ids"][:10] != data["test"]["input_ids"]
    pairs = splits("copy", num_train=4, num_test=2, length=3, seq2seq=True)
    assert {len(row) for split in pairs.values() for row in split["labels"]} == {3}
    with pytest.raises(ValueError, match="takes no argument"):
        splits("reverse", length=3, digits=2)
