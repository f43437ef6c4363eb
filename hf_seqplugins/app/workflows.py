"""The main job as functions: train any registered architecture on a task, evaluate it, generate.

Used by the `hf-seqplugins train | evaluate | generate | demo` verbs; everything runs through the
unmodified transformers `Trainer`, `generate()` and the shipped `evaluate` modules.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_from_disk
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging as transformers_logging

from ..core.optim import optimizer_cls_and_kwargs
from ..core.registry import load_plugins
from . import metrics, tasks
from .data import byte_tokenizer, is_byte_tokenizer, language_modeling_dataset

TEXT_TASK = "pydoc"
TASK_CHOICES = (TEXT_TASK, *sorted(tasks.TASKS))


def load_task(
    task: str,
    block_size: int = 128,
    text_files: list[str] | None = None,
    seed: int = 0,
    task_kwargs: dict | None = None,
) -> tuple[DatasetDict, object | None]:
    """`(DatasetDict with train/test, tokenizer or None)` for a task name, text files, or a saved dataset folder.

    Text (the embedded `pydoc` corpus or `text_files`) is byte-tokenized; the synthetic tasks are already token ids
    (no tokenizer) and take `task_kwargs` (`tasks.splits` arguments, e.g. `{"length": 1024, "num_train": 512}`). A
    folder written by `DatasetDict.save_to_disk` with `input_ids`/`labels` works too.
    """
    if task_kwargs and task not in tasks.TASKS:
        raise ValueError(
            f"task arguments {sorted(task_kwargs)} apply to the synthetic tasks ({', '.join(sorted(tasks.TASKS))}), "
            f"not to {task!r}"
        )
    if text_files:
        text = "\n\n".join(Path(f).read_text(encoding="utf-8") for f in text_files)
        tokenizer = byte_tokenizer()
        return language_modeling_dataset(tokenizer, text, block_size), tokenizer
    if task == TEXT_TASK:
        tokenizer = byte_tokenizer()
        return language_modeling_dataset(tokenizer, block_size=block_size), tokenizer
    if task in tasks.TASKS:
        return tasks.splits(task, seed=seed, **(task_kwargs or {})), None
    if Path(task).is_dir():
        return load_from_disk(task), None
    raise ValueError(
        f"unknown task {task!r}: choose from {list(TASK_CHOICES)}, pass text files, or a saved dataset folder"
    )


def vocab_size_of(data: DatasetDict, tokenizer) -> int:
    """The tokenizer's vocabulary, else the one the task recorded, else 1 + the largest id in the data."""
    if tokenizer is not None:
        return len(tokenizer)
    recorded = {tasks.vocab_size(split) for split in data.values()} - {None}
    if recorded:
        return max(recorded)
    return 1 + max(max(row) for split in data.values() for row in split["input_ids"])


def parse_overrides(items: list[str]) -> dict:
    """`["hidden_size=64", "cell=gru"]` -> `{"hidden_size": 64, "cell": "gru"}` (JSON values, else strings)."""
    import json

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"config override {item!r} must look like key=value")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def check_config_keys(model_type: str, overrides: dict) -> None:
    """Refuse keys that are not fields of `model_type`'s config (a misspelt key would otherwise be stored and
    ignored), naming the closest field."""
    import difflib

    known = set(AutoConfig.for_model(model_type).to_dict()) | set(
        inspect.signature(type(AutoConfig.for_model(model_type)).__init__).parameters
    )
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{model_type} has no config field {key!r}{hint}")


def sequence_classifier(config) -> PreTrainedModel:
    """A fresh `AutoModelForSequenceClassification` for `config`; an error naming the model type when it has none."""
    try:
        return AutoModelForSequenceClassification.from_config(config)
    except ValueError as error:
        raise ValueError(
            f"model type {config.model_type!r} has no sequence classifier (AutoModelForSequenceClassification), "
            "so it cannot train on a classification task"
        ) from error


def is_classifier(model: PreTrainedModel) -> bool:
    """Whether `model` is a sequence classifier (one prediction per row) rather than a causal LM."""
    return type(model).__name__.endswith("ForSequenceClassification")


def train(
    model_type: str,
    data: DatasetDict,
    tokenizer,
    output_dir: str | Path,
    max_steps: int = 300,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    overrides: dict | None = None,
    lora: bool = False,
    resume: bool = False,
    seed: int = 0,
) -> tuple[PreTrainedModel, Trainer]:
    """Train a fresh `model_type` model on `data["train"]` with `Trainer` (checkpoints in output_dir/checkpoints): a
    causal LM, or a sequence classifier (`AutoModelForSequenceClassification`, `num_labels` and `pad_token_id` from the
    data) when the data is a classification task (`tasks.num_labels`: a `ClassLabel` per row, e.g. ListOps).

    `overrides` set config fields (default: a small model); parameters that declare optimizer settings (e.g. the
    SSM parameters of S4: own learning rate, no weight decay) get them (`hf_seqplugins.core.optim`); the callbacks the
    architecture offers (`Architecture.trainer_callbacks`, e.g. ParaRNN's Newton statistics) are added; `lora` trains
    LoRA adapters on every linear layer (PEFT) and merges them back at the end; `resume` continues from the last
    checkpoint in `output_dir`.
    """
    torch.manual_seed(seed)
    check_config_keys(model_type, overrides or {})
    settings = {"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256, **(overrides or {})}
    settings["vocab_size"] = vocab_size_of(data, tokenizer)
    if tokenizer is not None:
        settings.update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    classes = tasks.num_labels(data["train"])
    if classes is None:
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings))
    else:
        settings.update(num_labels=classes, pad_token_id=tasks.pad_token_id(data["train"]))
        model = sequence_classifier(AutoConfig.for_model(model_type, **settings))
    trained = model
    if lora:
        import peft

        task_type = None if classes is None else peft.TaskType.SEQ_CLS  # SEQ_CLS also trains the new `score` head
        trained = peft.get_peft_model(
            model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type=task_type)
        )
    checkpoints = Path(output_dir) / "checkpoints"
    args = TrainingArguments(
        output_dir=str(checkpoints),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=2 * batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(20, max_steps // 10),
        logging_steps=max(1, min(25, max_steps // 4)),
        save_steps=max(1, max_steps // 2),
        save_total_limit=1,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
    )
    trainer = Trainer(
        model=trained,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(trained, args),
        **metrics.trainer_metrics(data["test"]),
    )
    for callback in reversed(load_plugins()[model_type].trainer_callbacks):
        trainer.callback_handler.callbacks.insert(0, callback())  # first, so printed logs include what they add
    # transformers' own bars (e.g. "Writing model shards" at every checkpoint) would break the training bar
    transformers_logging.disable_progress_bar()
    try:
        trainer.train(resume_from_checkpoint=resume and any(checkpoints.glob("checkpoint-*")))
    finally:
        transformers_logging.enable_progress_bar()
    if lora:
        model = trained.merge_and_unload()
        trainer.model = model
    return model.eval(), trainer


@torch.no_grad()
def evaluate(model: PreTrainedModel, data: Dataset, tokenizer=None, batch_size: int = 32) -> dict:
    """Held-out metrics. Causal LM: `loss`, exact-match `accuracy` over the labelled positions (and, for task rows
    without a tokenizer, `sequence_accuracy`: every labelled position of a row right),
    `bits_per_byte` when the tokens are bytes (a byte tokenizer), `dfa_accuracy` when rows carry a `dfa` (RegBench).
    Sequence classifier on classification rows (`tasks.num_labels`): `loss` (mean cross-entropy) and `accuracy`."""
    classification = tasks.num_labels(data) is not None
    if classification != is_classifier(model):
        model_kind = "a sequence classifier" if is_classifier(model) else "a causal LM"
        data_kind = (
            "classification rows (one label per row)"
            if classification
            else "language-modelling rows (a label per token)"
        )
        raise ValueError(f"cannot evaluate {type(model).__name__}, {model_kind}, on {data_kind}")
    if classification:
        return _evaluate_classifier(model, data, batch_size)
    model.eval()
    total_nll, total_tokens, predictions, references, next_tokens = 0.0, 0, [], [], []
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size]
        ids = torch.tensor(batch["input_ids"], device=model.device)
        labels = torch.tensor(batch["labels"], device=model.device)
        logits = model(ids, use_cache=False).logits[:, :-1].float()
        targets = labels[:, 1:]
        scored = targets != tasks.IGNORE
        total_nll += torch.nn.functional.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
        total_tokens += int(scored.sum())
        argmax = logits.argmax(-1)
        predictions += [row[keep].tolist() for row, keep in zip(argmax, scored)]
        references += [row[keep].tolist() for row, keep in zip(targets, scored)]
        if "dfa" in data.column_names:
            next_tokens += argmax.tolist()
    results = {"loss": total_nll / total_tokens}
    recall = metrics.load("recall_accuracy").compute(predictions=predictions, references=references)
    results["accuracy"] = recall["accuracy"]
    if tokenizer is None:  # rows of a task, where all queried tokens of a row right is the point (not text blocks)
        results["sequence_accuracy"] = recall["sequence_accuracy"]
    if is_byte_tokenizer(tokenizer):
        results.update(metrics.load("bits_per_byte").compute(nll=[total_nll], num_bytes=[total_tokens]))
    if "dfa" in data.column_names:
        results.update(
            metrics.load("dfa_accuracy").compute(predictions=next_tokens, references=data["input_ids"], dfa=data["dfa"])
        )
    return results


@torch.no_grad()
def _evaluate_classifier(model: PreTrainedModel, data: Dataset, batch_size: int) -> dict:
    """`loss` (mean cross-entropy) and `accuracy` of a sequence classifier on rows of `input_ids` `[T]`,
    `attention_mask` `[T]` (optional) and one class id in `labels`."""
    model.eval()
    total_nll, predictions = 0.0, []
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size]
        ids = torch.tensor(batch["input_ids"], device=model.device)
        mask = torch.tensor(batch["attention_mask"], device=model.device) if "attention_mask" in batch else None
        labels = torch.tensor(batch["labels"], device=model.device)
        logits = model(ids, attention_mask=mask).logits.float()
        total_nll += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        predictions += logits.argmax(-1).tolist()
    accuracy = metrics.load("classification_accuracy").compute(predictions=predictions, references=data["labels"])
    return {"loss": total_nll / len(data), **accuracy}


def evaluate_lengths(
    model: PreTrainedModel, task: str, lengths: list[int], num_examples: int = 64, seed: int = 1, **task_kwargs
) -> dict[int, dict]:
    """`evaluate` on fresh rows of `task` at each sequence length (length extrapolation, state capacity); `task_kwargs`
    go to the task (e.g. `max_depth=4` for ListOps)."""
    make = tasks.TASKS.get(task)
    if make is None or "length" not in inspect.signature(make).parameters:
        with_length = [name for name, f in tasks.TASKS.items() if "length" in inspect.signature(f).parameters]
        raise ValueError(f"task {task!r} has no length to vary; tasks with one: {with_length}")
    accepted = set(inspect.signature(make).parameters) - {"num_examples", "length", "seed"}
    refused = sorted(set(task_kwargs) - accepted)
    if refused:
        raise ValueError(
            f"task arguments {refused} do not apply when evaluating {task!r} at several lengths "
            f"(the lengths and row counts are set here); accepted: {sorted(accepted)}"
        )
    return {
        length: evaluate(model, make(num_examples=num_examples, length=length, seed=seed, **task_kwargs))
        for length in tqdm(lengths, desc=f"{task} lengths")
    }


def generate_text(model: PreTrainedModel, tokenizer, prompt: str, max_new_tokens: int = 100, **generate_kwargs) -> str:
    """Decode a continuation of `prompt` (prefill once, then O(1) per token from the recurrent cache)."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
    vocabulary = model.config.vocab_size
    if ids.numel() and int(ids.max()) >= vocabulary:
        outside = sorted({int(i) for i in ids[ids >= vocabulary]})
        raise ValueError(
            f"the prompt has token ids {outside[:5]} outside the model's vocabulary of {vocabulary}: "
            "the tokenizer does not match the model (or the text uses characters it never saw)"
        )
    output = model.generate(ids, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
    return tokenizer.decode(output[0], skip_special_tokens=True)


def classification_summary(results: dict) -> str:
    return f"loss {results['loss']:.3f}, accuracy {results['accuracy']:.3f}"


def perplexity_summary(results: dict) -> str:
    parts = [f"loss {results['loss']:.3f}", f"perplexity {math.exp(results['loss']):.2f}"]
    if "bits_per_byte" in results:
        parts.append(f"{results['bits_per_byte']:.3f} bits per byte")
    parts.append(f"accuracy on labelled tokens {results['accuracy']:.3f}")
    if "dfa_accuracy" in results:
        parts.append(f"DFA accuracy {results['dfa_accuracy']:.3f}")
    return ", ".join(parts)
