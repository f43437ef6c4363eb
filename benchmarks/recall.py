"""Recall at equal size and training: MQAR, passkey and key-value extraction, and JRT-Prompt (read twice); and
length generalisation on the algorithmic copy, reverse and addition tasks.

    python benchmarks/recall.py [--models seqp_aaren seqp_mamba2 'seqp_gru:ngram_layers=[1]'] [--steps 1500]
        [--lengths 64 128 256] [--params 100000 | --width 64] [--quick] [--output-dir benchmarks/results/cpu/recall]

Every model (default: every installed `seqp_*` type) and the Llama attention baseline (`llama (attention)`) is
sized to about `--params` parameters outside the embeddings (the width is searched; depth and the feed-forward
ratio are fixed, config overrides win) and trained from scratch with `Trainer` for `--steps` steps on each task at
each length, then scored on held-out rows by greedy exact-match accuracy (`hf_seqplugins.app.recall`); `--width`
fixes every model's `hidden_size` instead (no search, e.g. the Universal Transformer against a vanilla Transformer
of the same width):

- `mqar`: multi-query associative recall, `length / 4` key-value pairs, then every key asked once;
- `passkey`: a 5-digit number in byte-level filler text of the length;
- `kv_extraction`: a document of key-value facts (2 near-miss distractors) and one key to look up. Trained on
  plain and read-twice rows of the same facts (`--kv-train plain`: plain rows only, JRT-Prompt with no model
  change), scored plain (`kv_extraction`) and read twice (`kv_extraction read twice`, twice the prefill);
- `copy`, `reverse`, `addition` (the Universal Transformer paper's algorithmic tasks): the length is the number of
  input symbols (`--num-symbols` of them, rows of `2 length + 1` tokens) or of digits per number (rows of
  `3 length + 3` tokens); the score is the whole copy, reversal or sum right. These rows also report the
  teacher-forced per-token accuracy of the answer (`token_accuracy`) and, for ACT models, the mean steps run per
  token (`mean_ponder_steps`).

A length is `N` (every task) or `TASK=N` (that task only, instead of the plain ones), in `--lengths` and
`--eval-lengths` alike, e.g. `--lengths 8 addition=4 --eval-lengths 16 32 addition=8 addition=16`.

`--eval-lengths` also scores each trained model on rows of other lengths (extrapolation past the training length,
e.g. single-needle retrieval: `--tasks passkey --lengths 64 --eval-lengths 128 256`); such rows keep their
training length in `trained_at`, and the table and plot then show one line per model and training length.

A model spec is `type` or `type:key=value[:key=value...]` (JSON values) or `type:{json object}` of config
overrides; it is the label in the results, so one type can appear with several settings, e.g.
`seqp_gru 'seqp_gru:ngram_layers=[1]'`. Writes `recall.json` / `recall.md` and `recall.png` (accuracy against
context length, one panel per task) to `--output-dir`.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
from datasets import concatenate_datasets
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
from transformers.utils import logging as transformers_logging

from hf_seqplugins.app import bench, recall, tasks, workflows
from hf_seqplugins.app.plots import _pyplot
from hf_seqplugins.app.results import markdown_table, write_results
from hf_seqplugins.core.optim import optimizer_cls_and_kwargs
from hf_seqplugins.core.registry import MODEL_TYPE_PREFIX, load_plugins

ALGORITHMIC_TASKS = ("copy", "reverse", "addition")
TASK_NAMES = ("mqar", "passkey", "kv_extraction", *ALGORITHMIC_TASKS)
KV_TWICE = "kv_extraction read twice"
LENGTH_UNITS = {"copy": "input symbols", "reverse": "input symbols", "addition": "digits per number"}


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """`"seqp_gru:ngram_layers=[1]:hidden_size=64"` or `'seqp_gru:{"ngram_layers": [1]}'` -> `("seqp_gru",
    {"ngram_layers": [1], ...})`; the baseline is `bench.BASELINE` (or `llama`)."""
    model_type, _, rest = spec.partition(":")
    if not rest:
        return model_type, {}
    if rest.lstrip().startswith("{"):
        overrides = json.loads(rest)
        if not isinstance(overrides, dict):
            raise ValueError(f"model spec {spec!r}: the overrides after ':' must be a JSON object")
        return model_type, overrides
    return model_type, workflows.parse_overrides(re.split(r":(?=[A-Za-z_]\w*=)", rest))


def _llama_config(settings: dict) -> LlamaConfig:
    hidden = settings["hidden_size"]
    heads = max(1, hidden // 32)
    if hidden % heads:
        raise ValueError(f"hidden_size {hidden} is not a multiple of the {heads} attention heads")
    fields = {"num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": 1 << 14}
    return LlamaConfig(**{**fields, **settings})


def model_config(model_type: str, settings: dict):
    """The config of `model_type` (`bench.BASELINE` / `llama`: a Llama with heads of 32 channels) with `settings`."""
    if model_type in (bench.BASELINE, "llama"):
        return _llama_config(settings)
    workflows.check_config_keys(model_type, settings)
    return AutoConfig.for_model(model_type, **settings)


def build(config) -> torch.nn.Module:
    return LlamaForCausalLM(config) if isinstance(config, LlamaConfig) else AutoModelForCausalLM.from_config(config)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, those outside the input and output embeddings)."""
    total = sum(p.numel() for p in model.parameters())
    embeddings = {
        id(p): p.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()
    }
    return total, total - sum(embeddings.values())


def sized_settings(model_type: str, overrides: dict, target: int, layers: int, vocab_size: int) -> dict:
    """Width settings giving the non-embedding parameter count nearest `target`: hidden sizes 16, 24, ... 1024 with a
    feed-forward of twice the width and `layers` layers; `overrides` are kept (a fixed `hidden_size` is not
    searched). Counted on the meta device (nothing allocated)."""
    if model_type not in (bench.BASELINE, "llama"):
        workflows.check_config_keys(model_type, overrides)  # a misspelt key is named, not tried at every width
    widths = [overrides["hidden_size"]] if "hidden_size" in overrides else range(16, 1025, 8)
    best, errors = None, []
    for hidden in widths:
        settings = {"num_hidden_layers": layers, "intermediate_size": 2 * hidden, **overrides, "hidden_size": hidden}
        try:
            with torch.device("meta"):
                count = parameter_counts(build(model_config(model_type, {**settings, "vocab_size": vocab_size})))[1]
        except (ValueError, AssertionError) as error:  # a width this type cannot take (heads, head_dim, ...)
            errors.append(f"{hidden}: {error}")
            continue
        if best is None or abs(count - target) < abs(best[0] - target):
            best = (count, settings)
        if count > 2 * target:
            break
    if best is None:
        raise ValueError(f"no width of {model_type} with {overrides} builds: " + "; ".join(errors[:3]))
    return best[1]


def task_rows(task: str, length: int, num_train: int, num_test: int, seed: int = 0, **extra) -> dict:
    """Train/test splits of `task` with rows of about `length` tokens (mqar: `length / 4` pairs, each key asked once
    as in Zoology, so every row carries as many answers as pairs; twice as many keys and values as pairs, at least
    32; kv_extraction: as many 6-token facts as fit), or, for `ALGORITHMIC_TASKS`, of `length` input symbols or digits
    per number (`extra` passes on, e.g. `num_symbols` of copy and reverse)."""
    if task in ALGORITHMIC_TASKS:
        kwargs = {"length": length, **extra}
    elif task == "mqar":
        pairs = max(1, length // 4)
        symbols = max(32, 2 * pairs)
        kwargs = {"num_pairs": pairs, "num_queries": pairs, "num_keys": symbols, "num_values": symbols}
    elif task == "passkey":
        kwargs = {"length": length}
    else:
        kwargs = {"num_facts": max(3, (length - 3) // 6), "num_distractors": 2, **extra}
    return tasks.splits(task, num_train=num_train, num_test=num_test, seed=seed, **kwargs)


def lengths_by_task(items: list[str], task_names: list[str], flag: str) -> dict[str, list[int]]:
    """The lengths of each task from `--lengths` / `--eval-lengths` items: `N` for every task, `TASK=N` for that task
    only (then in place of the plain ones), e.g. `["8", "addition=4"]` -> `{"copy": [8], "addition": [4]}`."""
    plain, specific = [], {}
    for item in items:
        task, _, value = item.rpartition("=")
        if task and task not in TASK_NAMES:
            raise ValueError(f"{flag} {item!r}: no task {task!r}; the tasks are {', '.join(TASK_NAMES)}")
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{flag} {item!r}: a length is a positive integer N or TASK=N")
        (specific.setdefault(task, []) if task else plain).append(int(value))
    return {task: specific.get(task, plain) for task in task_names}


def answer_token_stats(model, test, batch_size: int = 32) -> dict:
    """Teacher-forced accuracy over every labelled answer token of `test` (rows of one length: `input_ids`,
    `labels` `[T]`), and, for a model whose outputs carry `ponder_times` `[B, T]` (ACT), the mean steps per token:
    `{"token_accuracy": ..., "mean_ponder_steps": ...}` (the latter only with ACT)."""
    right = answered = 0
    steps, positions = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(test), batch_size):
                batch = test[start : start + batch_size]
                ids, labels = torch.tensor(batch["input_ids"]), torch.tensor(batch["labels"])
                output = model(input_ids=ids, use_cache=False)
                guesses, targets = output.logits[:, :-1].argmax(-1), labels[:, 1:]  # logits at t - 1 predict t
                answer = targets != tasks.IGNORE
                right += int((guesses == targets)[answer].sum())
                answered += int(answer.sum())
                ponder = getattr(output, "ponder_times", None)
                if ponder is not None:
                    steps += float(ponder.sum())
                    positions += ponder.numel()
    finally:
        model.train(was_training)
    stats = {"token_accuracy": right / answered}
    if positions and getattr(model.config, "recurrence_type", None) == "act":
        stats["mean_ponder_steps"] = steps / positions
    return stats


def pad_right(rows: list[dict]) -> dict:
    """A batch of rows of any lengths, padded on the right (labels -100, attention mask 0): a causal LM's outputs
    before the padding do not see it."""
    longest = max(len(row["input_ids"]) for row in rows)
    batch = {"input_ids": [], "labels": [], "attention_mask": []}
    for row in rows:
        room = longest - len(row["input_ids"])
        batch["input_ids"].append(list(row["input_ids"]) + [0] * room)
        batch["labels"].append(list(row["labels"]) + [tasks.IGNORE] * room)
        batch["attention_mask"].append([1] * len(row["input_ids"]) + [0] * room)
    return {key: torch.tensor(value) for key, value in batch.items()}


def train(model, train_rows, steps: int, batch_size: int, learning_rate: float, output_dir: Path, seed: int):
    """`steps` AdamW steps (cosine schedule, short warm-up) with `Trainer`; the optimizer settings parameters declare
    (`hf_seqplugins.core.optim`) apply."""
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(20, steps // 10),
        logging_steps=max(1, steps // 4),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        data_collator=pad_right,
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(model, args),
    )
    transformers_logging.disable_progress_bar()
    try:
        trainer.train()
    finally:
        transformers_logging.enable_progress_bar()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return model.eval(), losses[-1] if losses else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="model specs (default: every installed seqp_* type)")
    parser.add_argument("--no-baseline", action="store_true", help=f"leave out {bench.BASELINE!r}")
    parser.add_argument("--tasks", nargs="+", default=list(TASK_NAMES), choices=TASK_NAMES)
    parser.add_argument(
        "--lengths",
        nargs="+",
        default=["64", "128", "256"],
        help="training lengths: tokens, or input symbols / digits for copy, reverse and addition; N or TASK=N",
    )
    parser.add_argument("--steps", type=int, default=1500, help="training steps of every model on every task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--params", type=int, default=100_000, help="target parameters outside the embeddings")
    parser.add_argument(
        "--width", type=int, help="every model's hidden_size, instead of sizing to --params (a spec's own wins)"
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument(
        "--eval-lengths",
        nargs="+",
        default=[],
        help="also score every trained model at these lengths (past the training length: extrapolation); N or TASK=N",
    )
    parser.add_argument("--num-symbols", type=int, default=8, help="copy and reverse: the alphabet size")
    parser.add_argument("--num-test", type=int, default=128)
    parser.add_argument("--kv-train", choices=["both", "plain"], default="both", help="kv_extraction training rows")
    parser.add_argument("--ask-first", action="store_true", help="kv_extraction rows open with 'about KEY .'")
    parser.add_argument(
        "--quick", action="store_true", help="20 steps, lengths 64 and 128 (TASK=N lengths kept; smoke test)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --output-dir/recall.json")
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results" / "cpu" / "recall"))
    args = parser.parse_args()
    if args.quick:
        args.steps, args.lengths = 20, ["64", "128", *(item for item in args.lengths if "=" in item)]
    train_lengths = lengths_by_task(args.lengths, args.tasks, "--lengths")
    eval_lengths = lengths_by_task(args.eval_lengths, args.tasks, "--eval-lengths")
    unlengthed = [task for task, lengths in train_lengths.items() if not lengths]
    if unlengthed:
        parser.error(f"--lengths gives no length for {', '.join(unlengthed)}")
    specs = args.models or sorted(t for t in load_plugins() if t.startswith(MODEL_TYPE_PREFIX))
    if not args.no_baseline:
        specs = [bench.BASELINE, *[s for s in specs if s != bench.BASELINE]]
    models = {spec: parse_model_spec(spec) for spec in specs}
    if args.width is not None:
        models = {spec: (model_type, {"hidden_size": args.width, **o}) for spec, (model_type, o) in models.items()}
    probe_vocab = 64  # the width search counts no embeddings, so any vocabulary does
    widths = {
        spec: sized_settings(model_type, overrides, args.params, args.layers, probe_vocab)
        for spec, (model_type, overrides) in models.items()
    }
    for spec, settings in widths.items():
        print(f"{spec}: {settings}", flush=True)

    rows, started = resumed_rows(args, widths), time.time()
    done = {(row["model"], row["task"], _trained_at(row)) for row in rows}
    num_train = args.steps * args.batch_size
    progress = tqdm(total=len(specs) * sum(map(len, train_lengths.values())), desc="recall")
    for task in args.tasks:
        for length in train_lengths[task]:
            extra = {"ask_first": True} if task == "kv_extraction" and args.ask_first else {}
            if task in ("copy", "reverse"):
                extra = {"num_symbols": args.num_symbols}
            data = task_rows(task, length, num_train, args.num_test, args.seed, **extra)
            train_rows = data["train"]
            if task == "kv_extraction":
                twice = task_rows(task, length, num_train, args.num_test, args.seed, read_twice=True, **extra)
                if args.kv_train == "both":  # the same facts in both forms, half the rows each
                    half = num_train // 2
                    train_rows = concatenate_datasets(
                        [data["train"].select(range(half)), twice["train"].select(range(half, num_train))]
                    )
            for spec, (model_type, _) in models.items():
                if (spec, task, length) in done:
                    progress.update()
                    continue
                progress.set_postfix_str(f"{spec} {task} T={length}")
                torch.manual_seed(args.seed)
                vocab = tasks.vocab_size(data["train"])
                model = build(model_config(model_type, {**widths[spec], "vocab_size": vocab}))
                total, non_embedding = parameter_counts(model)
                clock = time.time()
                model, loss = train(
                    model,
                    train_rows,
                    args.steps,
                    args.batch_size,
                    args.learning_rate,
                    Path("outputs/recall"),
                    args.seed,
                )
                seconds = time.time() - clock
                evaluations = {length: (data, twice if task == "kv_extraction" else None)}
                for longer in eval_lengths[task]:  # past the training length: the same model on longer rows
                    if longer != length:
                        evaluations[longer] = (
                            task_rows(task, longer, 1, args.num_test, args.seed, **extra),
                            task_rows(task, longer, 1, args.num_test, args.seed, read_twice=True, **extra)
                            if task == "kv_extraction"
                            else None,
                        )
                for context, (plain, read_twice) in evaluations.items():
                    tests = {task: plain["test"], **({KV_TWICE: read_twice["test"]} if read_twice else {})}
                    for name, test in tests.items():
                        answer_stats = answer_token_stats(model, test) if task in ALGORITHMIC_TASKS else {}
                        rows.append(
                            {
                                "model": spec,
                                "task": name,
                                "length": len(test[0]["input_ids"]),
                                "context": context,
                                "trained_at": length,
                                "accuracy": recall.recall_accuracy(model, test, progress=False),
                                **answer_stats,
                                "params": total,
                                "non_embedding_params": non_embedding,
                                "hidden_size": widths[spec]["hidden_size"],
                                "final_train_loss": loss,
                                "train_s": seconds,
                                "steps": args.steps,
                            }
                        )
                        print(rows[-1], flush=True)
                write(rows, args, widths, time.time() - started)  # after every model: a stopped run keeps its rows
                progress.update()
    progress.close()


def resumed_rows(args, widths: dict) -> list[dict]:
    """With `--resume`, the rows of an earlier run in `--output-dir` (which must have used the same steps and widths);
    their measurements are kept and not repeated."""
    path = Path(args.output_dir) / "recall.json"
    if not args.resume or not path.exists():
        return []
    rows = json.loads(path.read_text())
    for row in rows:
        width = widths.get(row["model"], {}).get("hidden_size")
        if row.get("steps") != args.steps or row.get("hidden_size") not in (width, None):
            raise ValueError(
                f"--resume: {path} holds {row['model']} rows of {row.get('steps')} steps and width "
                f"{row.get('hidden_size')}, this run trains {args.steps} steps at width {width}: "
                "use another --output-dir"
            )
    return rows


def write(rows: list[dict], args, widths: dict, seconds: float) -> None:
    """`recall.json` / `recall.md` (the machine, the settings, a pivot of accuracy and the full rows) and
    `recall.png`."""
    output_dir = Path(args.output_dir)
    per_token = [row for row in rows if "token_accuracy" in row]
    tables = "\n\n## Accuracy by context length\n\n" + markdown_table(_pivot(rows, "accuracy"))
    if per_token:
        tables += (
            "\n## Per-token accuracy of the answers (teacher-forced; copy, reverse, addition)\n\n"
            + markdown_table(_pivot(per_token, "token_accuracy"))
        )
    if args.width is None:
        sizing = f"every model sized to about {args.params:,} parameters outside the embeddings"
    else:
        sizing = f"every model at width {args.width} (no size search; parameter counts in the rows)"
    kv_note = (
        "plain and read-twice rows of the same facts, half each"
        if args.kv_train == "both"
        else "plain rows only (read twice is then unseen at training: JRT-Prompt with no model change)"
    )
    preamble = (
        f"Measured with `benchmarks/recall.py` on {time.strftime('%Y-%m-%d')} (this run {seconds / 60:.1f} min): "
        f"{sizing} ({args.layers} layers; widths "
        f"{ {spec: w['hidden_size'] for spec, w in widths.items()} }), trained from scratch for {args.steps} steps "
        f"(batch {args.batch_size}, lr {args.learning_rate}, cosine) on each task at each context length, scored by "
        f"greedy exact-match accuracy of the answers on {args.num_test} held-out rows. kv_extraction trained on "
        f"{kv_note}{'; rows open with the key (ask first)' if args.ask_first else ''}. `length` is the row's tokens "
        "(read twice: about twice the context). Chance: mqar 1/values, passkey 1e-5 (a whole 5-digit key), "
        "kv_extraction 1/256 (two value symbols of 16). For copy, reverse and addition the context length is the "
        f"input symbols ({args.num_symbols} of them) or digits per number, and chance is about 0 (a whole string, "
        f"{args.num_symbols}^-n, or a whole sum, 10^-(n+1)).\n\n" + bench.describe_machine() + tables + "\n## All rows"
    )
    written = write_results(rows, output_dir / "recall", "Recall at equal size and training steps", preamble)
    written.append(plot(rows, output_dir / "recall.png"))
    print("written:", ", ".join(map(str, written)))


def _pivot(rows: list[dict], value: str) -> list[dict]:
    """One row per series (`_series`) and task, one column per context length, holding `value`; the columns read
    `n=` (input symbols / digits) when every row is of an algorithmic task, else `T≈` (tokens)."""
    contexts = sorted({row["context"] for row in rows})
    prefix = "n=" if all(row["task"] in ALGORITHMIC_TASKS for row in rows) else "T≈"
    pivot = []
    for series in dict.fromkeys(_series(row, rows) for row in rows):
        for task in dict.fromkeys(row["task"] for row in rows):
            cells = {r["context"]: r[value] for r in rows if _series(r, rows) == series and r["task"] == task}
            if cells:
                pivot.append({"model": series, "task": task, **{f"{prefix}{c}": cells.get(c) for c in contexts}})
    return pivot


def _trained_at(row: dict) -> int:
    return row.get("trained_at", row["context"])


def _series(row: dict, rows: list[dict]) -> str:
    """The row's model, and its training length when some model was scored at other lengths than its own."""
    if all(_trained_at(r) == r["context"] for r in rows):
        return row["model"]
    return f"{row['model']} (trained at {_trained_at(row)})"


def plot(rows: list[dict], path: Path) -> Path:
    """Accuracy against context length, one panel per task, one line per model (per model and training length when
    models were also scored past it)."""
    plt = _pyplot()
    names = list(dict.fromkeys(row["task"] for row in rows))
    figure, axes = plt.subplots(1, len(names), figsize=(max(7, 4 * len(names)), 4.6), sharey=True, squeeze=False)
    models = list(dict.fromkeys(row["model"] for row in rows))
    trained_at = list(dict.fromkeys(_trained_at(row) for row in rows))
    legend = {}  # label -> line, over every panel (tasks trained at different lengths have different series)
    for axis, task in zip(axes[0], names):
        for series, first in {_series(row, rows): row for row in rows}.items():
            points = sorted(
                (r["context"], r["accuracy"]) for r in rows if _series(r, rows) == series and r["task"] == task
            )
            if points:  # one colour per model and one line style per training length, in every panel
                style = {
                    "color": f"C{models.index(first['model']) % 10}",
                    "linestyle": ("-", "--", ":", "-.")[trained_at.index(_trained_at(first)) % 4],
                }
                (line,) = axis.plot(*zip(*points), marker="o", label=series, **style)
                legend.setdefault(series, line)
        axis.set_xscale("log", base=2)
        unit = LENGTH_UNITS.get(task, "tokens")
        axis.set(title=task, xlabel=f"context length ({unit})", ylim=(-0.03, 1.03))
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("exact-match accuracy")
    labels = list(legend)
    figure.legend(list(legend.values()), labels, loc="lower center", fontsize=7, ncol=2)  # below: labels can be long
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout(rect=(0, 0.08 + 0.035 * ((len(labels) + 1) // 2), 1, 1))
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


if __name__ == "__main__":
    main()
