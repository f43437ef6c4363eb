"""JRT-Prompt ("just read twice") for any causal LM, and greedy exact-match recall accuracy.

A recurrent model reads its context once, in order, and must decide while reading what to keep in a fixed-size
state, before it has seen the question. JRT-Prompt repeats the context before the question,

    prompt = intro + context + separator + context + question

so the second reading happens after the model has seen everything once (and, with an intro naming what is asked,
after it knows what matters). Nothing about the model changes; prefill costs twice the tokens. SWDE, for example,
read twice: `read_twice(doc, "Product:", intro="Information about Product. ", separator="\\n")`.

- `read_twice` (strings) and `read_twice_ids` (token-id lists) build the prompt; `encode_read_twice` tokenizes it
  piece by piece with any tokenizer (ours or one of transformers'), so both copies of the context are the same ids.
- `generate_answer`: greedy answer of a causal LM to a question about a context, read once or twice.
- `recall_accuracy`: greedy exact-match accuracy over the labelled answers of task rows (`tasks`), any causal LM.
- `compare_read_twice`: the same evaluation on the plain and the read-twice rows of a task (same facts, same seed).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from datasets import Dataset
from tqdm.auto import tqdm


def read_twice(context: str, question: str, intro: str = "", separator: str = "\n") -> str:
    """`intro + context + separator + context + question`: the JRT-Prompt form of a prompt that would be
    `intro + context + question`. Raises ValueError on an empty context (nothing to read twice)."""
    for name, value in (("context", context), ("question", question), ("intro", intro), ("separator", separator)):
        if not isinstance(value, str):
            raise TypeError(
                f"read_twice: {name} must be a string, got {type(value).__name__} (read_twice_ids takes ids)"
            )
    if not context:
        raise ValueError("read_twice: the context is empty")
    return intro + context + separator + context + question


def read_twice_ids(
    context: Sequence[int], question: Sequence[int], intro: Sequence[int] = (), separator: Sequence[int] = ()
) -> list[int]:
    """Token-level `read_twice`: `[*intro, *context, *separator, *context, *question]` for id lists (any
    tokenizer's ids, or a task's). Raises ValueError on an empty context and TypeError on anything but integer ids."""
    pieces = {"context": context, "question": question, "intro": intro, "separator": separator}
    for name, ids in pieces.items():
        if isinstance(ids, str | bytes) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise TypeError(f"read_twice_ids: {name} must be a sequence of integer token ids, got {ids!r:.60}")
    if not len(context):
        raise ValueError("read_twice_ids: the context is empty")
    return [*intro, *context, *separator, *context, *question]


def _prompt_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text when it adds special tokens (a BOS for Llama's, none for GPT-2's or
    ours); trailing special tokens (an EOS) are left out, since a prompt goes on."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(special) - len(plain) + 1):
        if special[start : start + len(plain)] == plain:
            return special[:start]
    return []


def encode_read_twice(
    tokenizer, context: str, question: str, intro: str = "", separator: str = "\n", add_special_tokens: bool = True
) -> list[int]:
    """The `read_twice` prompt as token ids of `tokenizer` (any transformers tokenizer): each piece is encoded on its
    own (no special tokens), so the two copies of the context are identical ids, then joined with `read_twice_ids`;
    with `add_special_tokens`, the tokenizer's leading special tokens (e.g. Llama's BOS) go first."""
    if tokenizer is None or not callable(tokenizer):
        raise TypeError(
            "encode_read_twice needs the model's tokenizer (e.g. AutoTokenizer.from_pretrained(folder)); "
            "for token ids without one, use read_twice_ids"
        )
    read_twice(context, question, intro, separator)  # the same checks on the strings

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    ids = read_twice_ids(encode(context), encode(question), encode(intro), encode(separator))
    return (_prompt_prefix(tokenizer) if add_special_tokens else []) + ids


@torch.no_grad()
def generate_answer(
    model,
    tokenizer,
    context: str,
    question: str,
    twice: bool = True,
    intro: str = "",
    separator: str = "\n",
    max_new_tokens: int = 16,
) -> str:
    """A causal LM's greedy answer (`generate`, no sampling) to `question` after `context`, read twice
    (`encode_read_twice`) or once (`intro + context + question`, with the same leading special tokens); the decoded
    new tokens only."""
    ids = encode_read_twice(tokenizer, context, question, intro, separator)  # checks the tokenizer and the strings
    if not twice:
        ids = _prompt_prefix(tokenizer) + tokenizer(intro + context + question, add_special_tokens=False)["input_ids"]
    prompt = torch.tensor([ids], device=model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
    )
    return tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)


def answer_spans(labels: Sequence[int], ignore: int = -100) -> list[tuple[int, int]]:
    """`[start, end)` of each maximal run of labelled positions (label != `ignore`): one answer each (MQAR rows
    have several, a passkey row one run of digits)."""
    spans, start = [], None
    for position, label in enumerate([*labels, ignore]):
        if label != ignore and start is None:
            start = position
        elif label == ignore and start is not None:
            spans.append((start, position))
            start = None
    return spans


def _left_padded(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`input_ids`, `attention_mask` and `position_ids`, each `[B, T_max]`, of rows padded on the left."""
    longest = max(len(row) for row in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, longest - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[index, longest - len(row) :] = 1
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    return ids.to(device), mask.to(device), positions.to(device)


@torch.no_grad()
def recall_accuracy(model, dataset: Dataset, batch_size: int = 32, progress: bool = True) -> float:
    """Greedy exact-match accuracy: the fraction of answers (`answer_spans` of each row's `labels`) that a causal LM
    gets entirely right. Works for any causal LM (`model(input_ids, attention_mask=..., position_ids=...).logits`).

    Rows (`input_ids` and `labels` `[T]`, labels -100 except at the answers, as `tasks` makes them) may differ in
    length: a batch is padded on the left, with an attention mask and position ids that start at each row's first
    real token. One forward per batch scores all answers with the true tokens before them (teacher forcing); for an
    exact match this is the same as greedy decoding of each answer from its prompt: greedy decoding writes the answer
    exactly when every answer token is the argmax given the right tokens before it. No gradients are kept; the model's
    train/eval mode is restored.
    """
    from . import tasks  # tasks builds its read-twice rows with this module: imported here, not at the top

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    missing = {"input_ids", "labels"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"recall_accuracy needs rows with input_ids and labels; this dataset lacks {sorted(missing)}")
    if len(dataset) == 0:
        raise ValueError("recall_accuracy: the dataset is empty")
    if tasks.num_labels(dataset) is not None:
        raise ValueError("recall_accuracy scores a causal LM's answers; these are classification rows (one label each)")
    pad_id = getattr(model.config, "pad_token_id", None)
    pad_id = 0 if pad_id is None else pad_id
    was_training = model.training
    model.eval()
    try:
        correct = total = 0
        starts = range(0, len(dataset), batch_size)
        for start in tqdm(starts, desc="recall", disable=not progress or len(starts) < 2, leave=False):
            batch = dataset[start : start + batch_size]
            spans = [answer_spans(labels, tasks.IGNORE) for labels in batch["labels"]]
            for row_index, row_spans in enumerate(spans):
                if not row_spans:
                    raise ValueError(f"row {start + row_index} has no labelled answer")
                if row_spans[0][0] == 0:
                    raise ValueError(
                        f"row {start + row_index} is labelled at its first token: no prompt to answer from"
                    )
            ids, mask, positions = _left_padded(batch["input_ids"], pad_id, model.device)
            predicted = model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
            ).logits.argmax(-1)
            longest = ids.shape[1]
            for row, labels, row_spans, prediction in zip(
                batch["input_ids"], batch["labels"], spans, predicted.tolist()
            ):
                offset = longest - len(row)
                for begin, end in row_spans:
                    # the logits at position t - 1 predict token t
                    guess = prediction[offset + begin - 1 : offset + end - 1]
                    correct += guess == list(labels[begin:end])
                    total += 1
    finally:
        model.train(was_training)
    return correct / total


def compare_read_twice(
    model,
    task: str = "kv_extraction",
    num_examples: int = 256,
    batch_size: int = 32,
    seed: int = 1,
    progress: bool = True,
    **task_kwargs,
) -> dict[str, float]:
    """`{"plain": ..., "read_twice": ...}`: `recall_accuracy` of `model` on `num_examples` rows of `task` (a task of
    `tasks.TASKS` with a `read_twice` option, e.g. `kv_extraction`) and on the read-twice rows of the same facts
    (same seed); `task_kwargs` go to the task (e.g. `num_facts=16`)."""
    from . import tasks

    make = tasks.TASKS.get(task)
    if make is None or "read_twice" not in inspect.signature(make).parameters:
        with_option = [name for name, f in tasks.TASKS.items() if "read_twice" in inspect.signature(f).parameters]
        raise ValueError(f"task {task!r} has no read_twice option; tasks with one: {with_option}")
    if "read_twice" in task_kwargs:
        raise ValueError("compare_read_twice evaluates both forms; do not pass read_twice")
    return {
        name: recall_accuracy(
            model, make(num_examples=num_examples, seed=seed, read_twice=twice, **task_kwargs), batch_size, progress
        )
        for name, twice in (("plain", False), ("read_twice", True))
    }
