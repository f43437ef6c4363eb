"""Synthetic probes of the recurrent-model literature as seeded `datasets.Dataset`s (no downloads).

Every row has `input_ids` and `labels` of one length; labels are -100 except at the answer tokens, so a
causal LM's loss (labels shifted inside the model) and `recall_accuracy` score only the answers (the `seq2seq=True`
rows of `copy`, `reverse` and `addition` aside: source `input_ids` and target `labels`, without -100).

- `mqar`: multi-query associative recall (key-value pairs, then queries of some keys).
- `selective_copying`: data tokens scattered among blanks, to be reproduced in order after a marker.
- `modular_counting`: the running sum of the inputs modulo m at the end (parity for m = 2): state tracking.
- `passkey`: a number hidden in filler text (byte tokens), asked for at the end; grow `length` to probe
  state capacity and length extrapolation.
- `kv_extraction`: a document of key-value facts (with near-miss distractor keys), then one key whose value is
  the answer (SWDE/FDA-style extraction); `read_twice=True` gives the JRT-Prompt rows of the same facts.
- `regbench`: in-context language learning (RegBench): strings of a random regular language per row, to be
  continued validly; scored by the `dfa_accuracy` metric against the row's `dfa` column.
- `copy`, `reverse`, `addition`: the Universal Transformer paper's algorithmic tasks (t2t's): a random string to be
  copied or reversed after a separator, two `length`-digit numbers (least-significant digit first) and their sum;
  the vocabulary does not depend on `length`, so train short and score longer rows (length generalisation);
  `seq2seq=True` gives source/target rows for `AutoModelForSeq2SeqLM` instead.

Sequence classification (`CLASSIFICATION_TASKS`; rows carry `attention_mask` and one `labels` class per row, a
`ClassLabel`, see `num_labels`):

- `listops`: the value of a long nested MAX/MIN/MED/SM expression (Long Range Arena's ListOps), 10 classes.

Time-series forecasting (rows carry real-valued `past_values` `[T, C]` and `future_values` `[P, C]`, for
`AutoModelForTimeSeriesPrediction`; scored by the `forecast_error` metric, MSE and MAE):

- `sine_forecasting`: sums of sines of random frequency, amplitude and phase per channel, plus noise; forecast
  the next `prediction_length` steps.

`splits(task, ...)` gives train/test splits; for `regbench` the held-out rows come from unseen DFAs.
"""

from __future__ import annotations

import inspect
import math
import random

from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from .data import byte_tokenizer, pydoc_corpus
from .dfa import NUM_SYMBOLS, unique_dfas
from .recall import read_twice_ids

IGNORE = -100
PAD_TOKEN = "<pad>"


def _answer_labels(tokens: list[int], answer_positions: list[int]) -> list[int]:
    labels = [IGNORE] * len(tokens)
    for position in answer_positions:
        labels[position] = tokens[position]
    return labels


def _dataset(rows: list[tuple[list[int], list[int]]], vocab_size: int, names: tuple[str, ...] | None = None) -> Dataset:
    """Rows as a Dataset whose `input_ids` feature records the vocabulary: `ClassLabel(num_classes=vocab_size)`, or
    `ClassLabel(names=names)` when the tokens have names (`len(names) == vocab_size`)."""
    if names is not None and len(names) != vocab_size:
        raise ValueError(f"{len(names)} token names for a vocabulary of {vocab_size}")
    vocabulary = ClassLabel(names=list(names)) if names is not None else ClassLabel(num_classes=vocab_size)
    features = Features({"input_ids": List(vocabulary), "labels": List(Value("int64"))})
    return Dataset.from_dict({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows]}, features=features)


def vocab_size(data: Dataset) -> int | None:
    """The vocabulary a task's rows are drawn from (None for datasets that do not record it)."""
    feature = getattr(data.features.get("input_ids"), "feature", None)
    return feature.num_classes if isinstance(feature, ClassLabel) else None


def num_labels(data: Dataset) -> int | None:
    """The number of classes of a sequence-classification dataset (one `ClassLabel` per row in `labels`), else None."""
    feature = data.features.get("labels")
    return feature.num_classes if isinstance(feature, ClassLabel) else None


def pad_token_id(data: Dataset) -> int | None:
    """The id the rows pad with, when the `input_ids` vocabulary names a `PAD_TOKEN` (ListOps), else None."""
    feature = getattr(data.features.get("input_ids"), "feature", None)
    names = feature.names if isinstance(feature, ClassLabel) else []
    return names.index(PAD_TOKEN) if PAD_TOKEN in names else None


def mqar(
    num_examples: int = 256,
    num_pairs: int = 8,
    num_queries: int = 4,
    num_keys: int = 32,
    num_values: int = 32,
    seed: int = 0,
) -> Dataset:
    """Tokens: keys `[0, num_keys)`, values `[num_keys, num_keys + num_values)`. Row: `k1 v1 ... kN vN q1 a1 ... qQ aQ`
    with distinct keys; each query is one of the keys and its answer the paired value. Vocabulary: keys + values."""
    if num_queries > num_pairs or num_pairs > num_keys:
        raise ValueError(f"need num_queries <= num_pairs <= num_keys, got {num_queries}, {num_pairs}, {num_keys}")
    rng = random.Random(seed)
    rows = []
    for _ in range(num_examples):
        keys = rng.sample(range(num_keys), num_pairs)
        values = [num_keys + rng.randrange(num_values) for _ in keys]
        tokens = [t for pair in zip(keys, values) for t in pair]
        answers = []
        for index in rng.sample(range(num_pairs), num_queries):
            tokens += [keys[index], values[index]]
            answers.append(len(tokens) - 1)
        rows.append((tokens, _answer_labels(tokens, answers)))
    return _dataset(rows, num_keys + num_values)


def selective_copying(
    num_examples: int = 256, length: int = 32, num_data: int = 4, num_symbols: int = 8, seed: int = 0
) -> Dataset:
    """Tokens: 0 blank, 1 marker, data symbols `[2, 2 + num_symbols)`. Row: `length` positions holding `num_data`
    symbols at random places among blanks, the marker, then the symbols in order (the answers)."""
    if num_data > length:
        raise ValueError(f"num_data ({num_data}) cannot exceed length ({length})")
    rng = random.Random(seed)
    rows = []
    for _ in range(num_examples):
        symbols = [2 + rng.randrange(num_symbols) for _ in range(num_data)]
        tokens = [0] * length
        for position, symbol in zip(sorted(rng.sample(range(length), num_data)), symbols):
            tokens[position] = symbol
        tokens += [1, *symbols]
        rows.append((tokens, _answer_labels(tokens, list(range(length + 1, len(tokens))))))
    return _dataset(rows, 2 + num_symbols)


def modular_counting(num_examples: int = 256, length: int = 16, modulus: int = 2, seed: int = 0) -> Dataset:
    """Tokens: inputs `[0, modulus)`, query `modulus`, answers `[modulus + 1, 2 * modulus + 1)`. Row: `length`
    inputs, the query, then the sum of the inputs modulo `modulus` (parity for 2)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_examples):
        inputs = [rng.randrange(modulus) for _ in range(length)]
        tokens = [*inputs, modulus, modulus + 1 + sum(inputs) % modulus]
        rows.append((tokens, _answer_labels(tokens, [len(tokens) - 1])))
    return _dataset(rows, 2 * modulus + 1)


def passkey(num_examples: int = 32, length: int = 512, digits: int = 5, seed: int = 0) -> Dataset:
    """Byte tokens (the `byte_tokenizer` ids). Row: filler text from `pydoc_corpus()` with
    "The passkey is NNNNN." at a random place, ending "What is the passkey? NNNNN"; the digits are the answers.
    `length` is the number of tokens of a row."""
    tokenizer = byte_tokenizer()
    filler = tokenizer(pydoc_corpus(), add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    rows = []
    for _ in range(num_examples):
        key = "".join(rng.choice("0123456789") for _ in range(digits))
        needle = tokenizer(f" The passkey is {key}. ", add_special_tokens=False)["input_ids"]
        question = tokenizer(f" What is the passkey? {key}", add_special_tokens=False)["input_ids"]
        room = length - len(needle) - len(question)
        if room < 0:
            raise ValueError(
                f"length {length} is too short for the passkey prompt ({len(needle) + len(question)} tokens)"
            )
        start = rng.randrange(len(filler) - room)
        text = filler[start : start + room]
        cut = rng.randrange(room + 1)
        tokens = text[:cut] + needle + text[cut:] + question
        rows.append((tokens, _answer_labels(tokens, list(range(len(tokens) - digits, len(tokens))))))
    return _dataset(rows, len(tokenizer))


def _check_integers(task: str, *checks: tuple[str, int, int]) -> None:
    """Refuse an argument that is not an integer (`name`, `value`, `least`) of at least `least`, naming it."""
    for name, value, least in checks:
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{task}: {name} must be an integer >= {least}, got {value!r}")


COPY_SEPARATOR = 0
COPY_FIRST_SYMBOL = 1


def _copy_rows(
    task: str, num_examples: int, length: int, num_symbols: int, seq2seq: bool, seed: int, reverse: bool
) -> Dataset:
    _check_integers(task, ("num_examples", num_examples, 1), ("length", length, 1), ("num_symbols", num_symbols, 2))
    rng = random.Random(f"copy/reverse {seed}")  # one stream for both: `reverse` rows are `copy` rows reversed
    rows = []
    for _ in range(num_examples):
        string = [COPY_FIRST_SYMBOL + rng.randrange(num_symbols) for _ in range(length)]
        target = string[::-1] if reverse else string
        if seq2seq:
            rows.append((string, target))
        else:
            tokens = [*string, COPY_SEPARATOR, *target]
            rows.append((tokens, _answer_labels(tokens, list(range(length + 1, len(tokens))))))
    return _dataset(rows, COPY_FIRST_SYMBOL + num_symbols)


def copy(
    num_examples: int = 256, length: int = 16, num_symbols: int = 8, seq2seq: bool = False, seed: int = 0
) -> Dataset:
    """Copy a string (the Universal Transformer paper's algorithmic copy task, t2t `algorithmic_identity`).

    Tokens: separator 0 (`COPY_SEPARATOR`), symbols `[1, 1 + num_symbols)`; vocabulary `1 + num_symbols` at every
    `length`, so a model trained on short rows can be scored on longer ones (length generalisation). Row (causal LM,
    `2 * length + 1` tokens): `length` uniformly random symbols, the separator, then the same symbols (the answers,
    the only labels). `seq2seq=True` (for `AutoModelForSeq2SeqLM`): `input_ids` the `length` symbols (the source),
    `labels` the copy (the target only, no -100; the same strings as the causal rows of the same seed; the
    separator id, unused there, can be the decoder start / padding id).

    Scored by exact match of the labelled answer tokens: the `recall_accuracy` metric (per token and
    `sequence_accuracy`, what `workflows.evaluate` reports) or `recall.recall_accuracy` (greedy, the fraction of rows
    whose whole copy is right); for seq2seq rows, the metric on the generated targets against `labels`.
    """
    return _copy_rows("copy", num_examples, length, num_symbols, seq2seq, seed, reverse=False)


def reverse(
    num_examples: int = 256, length: int = 16, num_symbols: int = 8, seq2seq: bool = False, seed: int = 0
) -> Dataset:
    """Reverse a string (the Universal Transformer paper's algorithmic reverse task, t2t `algorithmic_reverse`).

    Tokens and layout as `copy` (separator 0, symbols `[1, 1 + num_symbols)`, vocabulary `1 + num_symbols` at every
    `length`), but the answer is the string reversed: causal LM `s1 ... sL <sep> sL ... s1`, labelled at the
    reversed part; `seq2seq=True`: `input_ids` `s1 ... sL`, `labels` `sL ... s1`. With the same seed the strings are
    those of `copy`. Scored like `copy` (`recall_accuracy`).
    """
    return _copy_rows("reverse", num_examples, length, num_symbols, seq2seq, seed, reverse=True)


ADDITION_VOCAB = (*(str(digit) for digit in range(10)), "+", "=")
ADDITION_PLUS, ADDITION_EQUALS = 10, 11


def addition(
    num_examples: int = 256,
    length: int = 8,
    seq2seq: bool = False,
    least_significant_first: bool = True,
    seed: int = 0,
) -> Dataset:
    """Add two decimal numbers (the Universal Transformer paper's algorithmic addition, t2t `algorithmic_addition`,
    in base 10).

    Tokens (`ADDITION_VOCAB`, vocabulary 12 at every `length`, named in the `input_ids` feature): digits 0-9 are ids
    0-9, `+` 10 (`ADDITION_PLUS`), `=` 11 (`ADDITION_EQUALS`). Each number has `length` uniformly random digits, so a
    leading zero is allowed (the numbers are uniform on `[0, 10 ** length)`); the sum is written with `length + 1`
    digits (zero-padded; the last is the final carry), so every row of a call has one length.

    Digits are written least-significant first (t2t's lower-endian form, the one a model reading left to right can
    learn: each sum digit depends only on the digits already read and a carry); `least_significant_first=False`
    writes every number most-significant first (the usual way, harder: the first sum digit depends on every carry).

    Row (causal LM, `3 * length + 3` tokens): `a + b = s`, labelled at the `length + 1` digits of `s = a + b`.
    `seq2seq=True` (for `AutoModelForSeq2SeqLM`): `input_ids` `a + b` (`2 * length + 1` tokens, the source),
    `labels` the digits of `s` (the target only, no -100; the numbers of the causal rows of the same seed).

    Scored by exact match of the sum digits: the `recall_accuracy` metric (per digit and `sequence_accuracy`, what
    `workflows.evaluate` reports) or `recall.recall_accuracy` (greedy, the fraction of rows whose whole sum is right).
    """
    _check_integers("addition", ("num_examples", num_examples, 1), ("length", length, 1))
    rng = random.Random(f"addition {seed}")
    rows = []
    for _ in range(num_examples):
        first = [rng.randrange(10) for _ in range(length)]  # least-significant digit first
        second = [rng.randrange(10) for _ in range(length)]
        total, carry = [], 0
        for x, y in zip(first, second):
            carry, digit = divmod(x + y + carry, 10)
            total.append(digit)
        total.append(carry)
        if not least_significant_first:
            first, second, total = first[::-1], second[::-1], total[::-1]
        source = [*first, ADDITION_PLUS, *second]
        if seq2seq:
            rows.append((source, total))
        else:
            tokens = [*source, ADDITION_EQUALS, *total]
            rows.append((tokens, _answer_labels(tokens, list(range(len(source) + 1, len(tokens))))))
    return _dataset(rows, len(ADDITION_VOCAB), ADDITION_VOCAB)


KV_COLON, KV_PERIOD, KV_NEWLINE, KV_ABOUT = range(4)
KV_FIRST_SYMBOL = 4


def kv_extraction(
    num_examples: int = 256,
    num_facts: int = 8,
    num_distractors: int = 2,
    key_length: int = 2,
    value_length: int = 2,
    num_keys: int = 16,
    num_values: int = 16,
    read_twice: bool = False,
    ask_first: bool = False,
    seed: int = 0,
) -> Dataset:
    """Key-value extraction from a document, SWDE/FDA style, in token ids.

    Tokens: `:` 0 (`KV_COLON`), `.` 1 (`KV_PERIOD`), newline 2 (`KV_NEWLINE`), "about" 3 (`KV_ABOUT`), key symbols
    `[4, 4 + num_keys)`, value symbols after them. A fact is `key : value .` (keys of `key_length` symbols, values of
    `value_length`); a document is `num_facts` facts with distinct keys in random order. One fact is asked about;
    `num_distractors` of the others have near-miss keys (the asked key with only its last symbol changed), so the whole
    key must match. Row: `document key :` then the value (the answers, the only labels).

    `read_twice=True`: the JRT-Prompt rows of the same facts (same seed), `document newline document key : value`
    (`recall.read_twice_ids`); `ask_first=True` puts the intro `about key .` first (SWDE's "Information about {Key}.").
    Every row of one call has the same length.
    """
    for name, value, least in (
        ("num_examples", num_examples, 1),
        ("num_facts", num_facts, 1),
        ("num_distractors", num_distractors, 0),
        ("key_length", key_length, 1),
        ("value_length", value_length, 1),
        ("num_keys", num_keys, 2),
        ("num_values", num_values, 1),
    ):
        if not isinstance(value, int) or value < least:
            raise ValueError(f"kv_extraction: {name} must be an integer >= {least}, got {value!r}")
    if num_distractors >= num_facts:
        raise ValueError(f"kv_extraction: need num_distractors < num_facts, got {num_distractors} and {num_facts}")
    if num_distractors and (key_length < 2 or num_distractors >= num_keys):
        raise ValueError(
            "kv_extraction: near-miss distractors change the last key symbol of a key of 2+ symbols: need "
            f"key_length >= 2 and num_distractors < num_keys, got {key_length} and {num_distractors} < {num_keys}"
        )
    if num_facts > num_keys**key_length:
        raise ValueError(f"kv_extraction: {num_facts} distinct keys need num_keys ** key_length >= num_facts")
    rng = random.Random(f"kv_extraction {seed}")
    first_value = KV_FIRST_SYMBOL + num_keys
    rows = []
    for _ in range(num_examples):
        asked = tuple(KV_FIRST_SYMBOL + rng.randrange(num_keys) for _ in range(key_length))
        last_symbols = rng.sample(sorted(set(range(KV_FIRST_SYMBOL, first_value)) - {asked[-1]}), num_distractors)
        keys = [asked, *(asked[:-1] + (symbol,) for symbol in last_symbols)]
        while len(keys) < num_facts:
            key = tuple(KV_FIRST_SYMBOL + rng.randrange(num_keys) for _ in range(key_length))
            if key not in keys:
                keys.append(key)
        values = [[first_value + rng.randrange(num_values) for _ in range(value_length)] for _ in keys]
        order = rng.sample(range(num_facts), num_facts)
        document = [t for i in order for t in (*keys[i], KV_COLON, *values[i], KV_PERIOD)]
        question = [*asked, KV_COLON]
        intro = [KV_ABOUT, *asked, KV_PERIOD] if ask_first else []
        if read_twice:
            prompt = read_twice_ids(document, question, intro, [KV_NEWLINE])
        else:
            prompt = [*intro, *document, *question]
        tokens = prompt + values[0]
        rows.append((tokens, _answer_labels(tokens, list(range(len(prompt), len(tokens))))))
    return _dataset(rows, first_value + num_values)


REGBENCH_SEPARATOR, REGBENCH_PAD = NUM_SYMBOLS, NUM_SYMBOLS + 1


def regbench(num_examples: int = 256, length: int = 256, seed: int = 0, skip_dfas: int = 0) -> Dataset:
    """Tokens: symbols `[0, 18)`, separator 18, padding 19. Row: 10-19 strings of 1-49 symbols, uniform random
    walks of one random DFA, joined by separators, cut or padded to `length`. Every symbol is labelled (next-token
    prediction; separators and padding are not). Column `dfa` holds the automaton as `[state, symbol, next]` rows.
    Rows use distinct DFAs: the stream of distinct DFAs from `seed` after its first `skip_dfas`."""
    rng = random.Random(f"regbench strings {seed} {skip_dfas}")  # independent of the DFA stream's draws
    rows, tables = [], []
    for dfa in unique_dfas(num_examples, seed=seed, skip=skip_dfas):
        tokens = []
        for _ in range(rng.randint(10, 19)):
            tokens += [*dfa.random_string(rng, rng.randint(1, 49)), REGBENCH_SEPARATOR]
        tokens = tokens[:length] + [REGBENCH_PAD] * max(0, length - len(tokens))
        rows.append((tokens, [t if t < NUM_SYMBOLS else IGNORE for t in tokens]))
        tables.append(dfa.table())
    return _dataset(rows, NUM_SYMBOLS + 2).add_column("dfa", tables)


LISTOPS_OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
LISTOPS_VOCAB = (*(str(digit) for digit in range(10)), *LISTOPS_OPERATORS, "]", PAD_TOKEN)
LISTOPS_MAX, LISTOPS_MIN, LISTOPS_MED, LISTOPS_SM = range(10, 14)
LISTOPS_CLOSE, LISTOPS_PAD = 14, 15
LISTOPS_NUM_CLASSES = 10


def _arguments_evaluating_to(operator: int, value: int, count: int, rng: random.Random) -> list[int]:
    """`count` argument values, in random order, on which `operator` gives `value` (drawn with `rng.random()`, for
    speed)."""
    uniform = rng.random
    if operator == LISTOPS_SM:
        values = [int(uniform() * 10) for _ in range(count - 1)]
        return [*values, (value - sum(values)) % 10]
    if operator in (LISTOPS_MAX, LISTOPS_MIN):
        values = [
            int(uniform() * (value + 1)) if operator == LISTOPS_MAX else 9 - int(uniform() * (10 - value))
            for _ in range(count - 1)
        ]
        values.insert(int(uniform() * count), value)
        return values
    if count % 2:
        side = count // 2
        values = [
            value,
            *(int(uniform() * (value + 1)) for _ in range(side)),
            *(9 - int(uniform() * (10 - value)) for _ in range(side)),
        ]
    else:
        total = 2 * value + int(uniform() * 2) if value < 9 else 18
        lower = rng.randint(max(0, total - 9), total // 2)
        upper = total - lower
        side = count // 2 - 1
        values = [
            lower,
            upper,
            *(int(uniform() * (lower + 1)) for _ in range(side)),
            *(9 - int(uniform() * (10 - upper)) for _ in range(side)),
        ]
    rng.shuffle(values)
    return values


def _split(total: int, parts: int, most: int, rng: random.Random) -> list[int]:
    """`total` as `parts` random positive sizes (uniform on the simplex), each at most `most` (needs
    `parts <= total <= parts * most`)."""
    uniform = rng.random
    weights = [-math.log(1.0 - uniform()) for _ in range(parts)]
    scale = (total - parts) / (sum(weights) or 1.0)
    sizes = [1 + int(weight * scale) for weight in weights]
    for _ in range(total - sum(sizes)):
        sizes[int(uniform() * parts)] += 1
    if max(sizes) > most:
        overflow = sum(max(0, size - most) for size in sizes)
        sizes = [min(size, most) for size in sizes]
        for index in range(parts):
            room = min(most - sizes[index], overflow)
            sizes[index] += room
            overflow -= room
    return sizes


def _listops_capacities(max_depth: int, max_args: int, limit: int) -> list[int]:
    """Entry d: the most tokens an expression of at most d nested operators of at most `max_args` arguments has,
    capped at `limit`; d = 0..max_depth."""
    capacities = [1]
    for _ in range(max_depth):
        capacities.append(min(limit, 2 + max_args * capacities[-1]))
    return capacities


def _write_expression(
    tokens: list[int], budget: int, depth: int, value: int, max_args: int, capacities: list[int], rng: random.Random
) -> int:
    """Append to `tokens` an expression of at most `budget` tokens and `depth` nested operators that evaluates to
    `value`; returns how many tokens it wrote. Arguments pass the budget their expressions leave unused to the next.
    `capacities`: `_listops_capacities(max_depth, max_args, ...)`."""
    if depth == 0 or budget < 4:
        tokens.append(value)
        return 1
    child_capacity = capacities[depth - 1]
    fewest = max(2, -(-(budget - 2) // child_capacity))
    count = fewest + int(rng.random() * (min(max_args, budget - 2) - fewest + 1))
    operator = LISTOPS_MAX + int(rng.random() * 4)
    tokens.append(operator)
    written, unused = 2, 0
    for size, argument in zip(
        _split(budget - 2, count, child_capacity, rng), _arguments_evaluating_to(operator, value, count, rng)
    ):
        size = min(child_capacity, size + unused)
        if size < 4 or depth == 1:
            tokens.append(argument)
            used = 1
        else:
            used = _write_expression(tokens, size, depth - 1, argument, max_args, capacities, rng)
        written += used
        unused = size - used
    tokens.append(LISTOPS_CLOSE)
    return written


def listops(
    num_examples: int = 256, length: int = 512, max_depth: int = 10, max_args: int = 10, seed: int = 0
) -> Dataset:
    """ListOps (Long Range Arena): classify the value (0-9) of a nested prefix expression, e.g.
    `[MAX 4 3 [MIN 2 3 ] 1 0 ]` -> 4.

    Operators: `[MAX`, `[MIN`, `[MED` (median; of an even count, the floor of the mean of the two middle values) and
    `[SM` (sum modulo 10), each opening a list of 2 to `max_args` arguments closed by `]`; arguments are digits or
    expressions, nested at most `max_depth` operators deep. Tokens (`LISTOPS_VOCAB`, vocabulary 16): digits 0-9 are ids
    0-9, `[MAX` 10, `[MIN` 11, `[MED` 12, `[SM` 13, `]` 14, padding 15 (`LISTOPS_PAD`).

    Columns: `input_ids` (`length` ids: the expression, then padding on the right), `attention_mask` (1 on the
    expression, 0 on padding) and `labels` (the value, `ClassLabel(num_classes=10)`). Each expression's size is drawn
    uniformly between half and all of `length` (or of the most tokens `max_depth` and `max_args` allow, if fewer).
    Labels are balanced: each row's value is drawn uniformly and the expression is built top-down to evaluate to it
    (LRA's bottom-up random trees skew towards some values), every operator drawn uniformly at every node.
    """
    for name, value, least in (
        ("num_examples", num_examples, 1),
        ("length", length, 4),
        ("max_depth", max_depth, 1),
        ("max_args", max_args, 2),
    ):
        if not isinstance(value, int) or value < least:
            raise ValueError(f"listops: {name} must be an integer >= {least}, got {value!r}")
    rng = random.Random(f"listops {seed}")
    capacities = _listops_capacities(max_depth, max_args, length)
    most = capacities[-1]
    input_ids, attention_mask, labels = [], [], []
    for _ in range(num_examples):
        value = rng.randrange(LISTOPS_NUM_CLASSES)
        tokens: list[int] = []
        _write_expression(tokens, rng.randint(max(4, most // 2), most), max_depth, value, max_args, capacities, rng)
        padding = length - len(tokens)
        input_ids.append(tokens + [LISTOPS_PAD] * padding)
        attention_mask.append([1] * len(tokens) + [0] * padding)
        labels.append(value)
    features = Features(
        {
            "input_ids": List(ClassLabel(names=list(LISTOPS_VOCAB))),
            "attention_mask": List(Value("int8")),
            "labels": ClassLabel(num_classes=LISTOPS_NUM_CLASSES),
        }
    )
    return Dataset.from_dict(
        {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}, features=features
    )


def sine_forecasting(
    num_examples: int = 256,
    length: int = 64,
    prediction_length: int = 8,
    channels: int = 2,
    components: int = 2,
    noise: float = 0.05,
    seed: int = 0,
) -> Dataset:
    """Rows of `past_values` `[length, channels]` and the following `future_values` `[prediction_length, channels]`
    of x(t) = sum of `components` sines (period 4 to 32 steps, amplitude 0.5 to 1, random phase) + N(0, noise^2)."""
    rng = random.Random(seed)
    past, future = [], []
    for _ in range(num_examples):
        series = [[0.0] * channels for _ in range(length + prediction_length)]
        for channel in range(channels):
            for _ in range(components):
                period, amplitude, phase = rng.uniform(4, 32), rng.uniform(0.5, 1), rng.uniform(0, 2 * math.pi)
                for t, row in enumerate(series):
                    row[channel] += amplitude * math.sin(2 * math.pi * t / period + phase)
            for row in series:
                row[channel] += rng.gauss(0, noise)
        past.append(series[:length])
        future.append(series[length:])
    features = Features({"past_values": List(List(Value("float32"))), "future_values": List(List(Value("float32")))})
    return Dataset.from_dict({"past_values": past, "future_values": future}, features=features)


FORECASTING_TASKS = {"sine_forecasting": sine_forecasting}


TASKS = {
    "mqar": mqar,
    "selective_copying": selective_copying,
    "modular_counting": modular_counting,
    "passkey": passkey,
    "kv_extraction": kv_extraction,
    "regbench": regbench,
    "listops": listops,
    "copy": copy,
    "reverse": reverse,
    "addition": addition,
}
CLASSIFICATION_TASKS = frozenset({"listops"})


def splits(task: str, num_train: int = 2048, num_test: int = 256, seed: int = 0, **task_kwargs) -> DatasetDict:
    """Train and test splits of a task, drawn with different seeds (RegBench: from disjoint sets of DFAs)."""
    make = TASKS[task]
    accepted = sorted(
        {"num_train", "num_test", *inspect.signature(make).parameters} - {"num_examples", "seed", "skip_dfas"}
    )
    unknown = sorted(set(task_kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"task {task!r} takes no argument {unknown}; it takes {accepted}")
    if task == "regbench":
        test = make(num_examples=num_test, seed=seed, skip_dfas=num_train, **task_kwargs)
    else:
        test = make(num_examples=num_test, seed=seed + 1, **task_kwargs)
    return DatasetDict(train=make(num_examples=num_train, seed=seed, **task_kwargs), test=test)
