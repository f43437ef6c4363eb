"""CoLa (chain of layers) on addition: a small Llama trained here, then a chain of its layers searched per sample.

    python benchmarks/cola_addition.py [--steps 3000] [--lengths 3] [--samples 200] [--budget 48]
        [--length-penalty 0.1] [--quick] [--output-dir benchmarks/results/cpu/cola]

A `LlamaForCausalLM` (default 6 layers, width 64, 4 heads, tied embeddings, vocabulary 12) is trained from scratch
with `Trainer` on `tasks.addition` rows (`a + b = s`, least-significant digit first) of the `--lengths`, mixed. Every
`--eval-every` steps it is scored on held-out rows, and training stops once a whole sum is right on
`--target-accuracy` of them: the analysis needs samples the model gets right and samples it gets wrong.

Then, for each of `--samples` further held-out rows (none of them a training row), `CoLaSearch` runs an MCTS over
chains of the model's layers (skip or repeat blocks of `--block-lengths` positions) with `--budget` evaluations and
the reward `CorrectnessReward`: 1 if the chain writes the whole sum, minus `--length-penalty * len(chain) / N`. A
sum is "written" when greedy decoding after '=' gives every digit; this is checked with one forward of the full row
(every sum digit is the argmax given the true digits before it, which for an exact match is the same as greedy
decoding). The reward uses the true sum: it is an oracle, as in the CoLa paper, so the shares below say which chains
exist, not what a model could pick without the answer.

Reported, as in the paper: the share of the samples the stock model gets right for which a shorter chain is right
too, and the share of those it gets wrong that some chain fixes; also the length of the best chains, their edits
(layers skipped and repeated) and the wall times. Writes `cola.json` and `cola.md` to `--output-dir`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from datasets import Dataset, concatenate_datasets
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging as transformers_logging

from hf_seqplugins import CoLaSearch, CorrectnessReward, identity_chain, summarize_searches
from hf_seqplugins.app import bench, recall, tasks
from hf_seqplugins.app.results import markdown_table

sys.path.insert(0, str(Path(__file__).parent))
from recall import pad_right  # noqa: E402

SAMPLE_ROWS_IN_MARKDOWN = 40


def addition_rows(lengths: list[int], count: int, seed: int, exclude: set | None = None) -> Dataset:
    """`count` addition rows, shared out over `lengths`, none of whose `input_ids` is in `exclude`."""
    parts = []
    for index, length in enumerate(lengths):
        wanted = count // len(lengths) + (index < count % len(lengths))
        if wanted == 0:
            continue
        rows = tasks.addition(2 * wanted + 64 if exclude else wanted, length=length, seed=seed)
        if exclude:
            rows = rows.filter(lambda row: tuple(row["input_ids"]) not in exclude)
        if len(rows) < wanted:
            raise ValueError(
                f"only {len(rows)} addition rows of length {length} are not training rows, {wanted} wanted: "
                "use longer numbers or fewer training steps"
            )
        parts.append(rows.select(range(wanted)))
    return concatenate_datasets(parts)


def build_model(args) -> LlamaForCausalLM:
    """A Llama from scratch; no special tokens, so that generation never stops at a digit."""
    config = LlamaConfig(
        vocab_size=len(tasks.ADDITION_VOCAB),
        hidden_size=args.width,
        intermediate_size=2 * args.width,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=4 * max(args.lengths) + 8,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config)


class StopAtAccuracy(TrainerCallback):
    """Every `every` steps, scores the model on `validation` (the share of rows whose whole sum is right) and stops
    training once the share reaches `target`. `history` keeps (step, share)."""

    def __init__(self, validation: Dataset, target: float, every: int):
        self.validation, self.target, self.every = validation, target, every
        self.history: list[tuple[int, float]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            accuracy = recall.recall_accuracy(model, self.validation, progress=False)
            self.history.append((state.global_step, accuracy))
            print(f"step {state.global_step}: {accuracy:.3f} of the validation sums right", flush=True)
            if accuracy >= self.target:
                control.should_training_stop = True


def train(model, train_rows: Dataset, stopper: StopAtAccuracy, args) -> float:
    """Trains `model` in place until `stopper` stops it or `args.steps` steps are done; returns the last logged
    training loss."""
    training_args = TrainingArguments(
        output_dir="outputs/cola_addition",
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(100, args.steps // 10),
        logging_steps=max(1, args.steps // 20),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_rows, data_collator=pad_right, callbacks=[stopper]
    )
    transformers_logging.disable_progress_bar()
    try:
        trainer.train()
    finally:
        transformers_logging.enable_progress_bar()
    model.eval()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses[-1] if losses else float("nan")


def search_sample(row: dict, device: torch.device) -> dict:
    """A held-out row as a search sample: the tokens up to the end of the sum, where the sum starts, its digits."""
    tokens = list(row["input_ids"])
    start = tokens.index(tasks.ADDITION_EQUALS) + 1
    return {"input_ids": torch.tensor([tokens], device=device), "answer_start": start, "answer": tokens[start:]}


def sum_is_right(model, sample: dict) -> bool:
    """Whether greedy decoding after '=' writes the whole sum: every sum digit is the argmax given the true digits
    before it (one forward of the full row)."""
    with torch.no_grad():
        logits = model(input_ids=sample["input_ids"], use_cache=False).logits[0]
    predicted = logits[sample["answer_start"] - 1 : -1].argmax(-1)
    return predicted.tolist() == sample["answer"]


def greedy_sum(model, sample: dict) -> list[int]:
    """The sum digits the model writes by greedy generation after '='."""
    prompt = sample["input_ids"][:, : sample["answer_start"]]
    with torch.no_grad():
        output = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=len(sample["answer"]),
            do_sample=False,
        )
    return output[0, prompt.shape[1] :].tolist()


def as_number(digits: list[int]) -> str:
    """Least-significant-first digit ids as the usual decimal string (leading zeros kept)."""
    return "".join(tasks.ADDITION_VOCAB[digit] for digit in reversed(digits))


def edit_counts(chain: tuple[int, ...], num_layers: int) -> tuple[int, int]:
    """(layers the chain leaves out, extra runs of layers it repeats), against the identity chain."""
    runs = Counter(chain)
    skipped = sum(runs[layer] == 0 for layer in range(num_layers))
    repeated = sum(count - 1 for count in runs.values() if count > 1)
    return skipped, repeated


def edit_kind(chain: tuple[int, ...], num_layers: int) -> str:
    """How `chain` differs from the identity chain: "identity", "skip only", "repeat only" or "skip and repeat"."""
    skipped, repeated = edit_counts(chain, num_layers)
    if skipped and repeated:
        return "skip and repeat"
    return "skip only" if skipped else "repeat only" if repeated else "identity"


def sample_table(samples: list[dict], results, stock_answers: list[list[int]]) -> list[dict]:
    """One row per searched sample."""
    rows = []
    for index, (sample, result, stock) in enumerate(zip(samples, results, stock_answers)):
        tokens = sample["input_ids"][0, : sample["answer_start"] - 1].tolist()
        plus = tokens.index(tasks.ADDITION_PLUS)
        rows.append(
            {
                "sample": index,
                "digits": plus,
                "problem": f"{as_number(tokens[:plus])} + {as_number(tokens[plus + 1 :])}",
                "sum": as_number(sample["answer"]),
                "stock answer": as_number(stock),
                "stock right": result.correct[result.identity],
                "best chain": " ".join(map(str, result.chain)),
                "best right": result.correct[result.chain],
                "best length": len(result.chain),
                "right chains": sum(result.correct.values()),
                "chains tried": result.simulations,
            }
        )
    return rows


def share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.1%})" if whole else f"{part}/0"


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(rows: list[dict], results, num_layers: int) -> dict:
    """The paper's two shares with their counts, the best chains' lengths and edits."""
    summary = summarize_searches(results)
    fixed_or_right = [result for result in results if result.correct[result.chain]]
    right_rows = [row for row in rows if row["stock right"]]
    fixed_rows = [row for row in rows if not row["stock right"] and row["best right"]]
    skips_by_layer, repeats_by_layer = Counter(), Counter()
    for result in fixed_or_right:
        runs = Counter(result.chain)
        skips_by_layer.update(layer for layer in range(num_layers) if runs[layer] == 0)
        repeats_by_layer.update({layer: count - 1 for layer, count in runs.items() if count > 1})
    return {
        "samples": len(rows),
        "stock right": share(summary.identity_correct, len(rows)),
        "shorter right chain, of the stock-right": share(summary.shorter, summary.identity_correct),
        "shorter_share": summary.shorter_share,
        "some chain right, of the stock-wrong": share(summary.fixed, summary.identity_wrong),
        "fixed_share": summary.fixed_share,
        "mean best length, stock-right": mean([row["best length"] for row in right_rows]),
        "mean best length, fixed": mean([row["best length"] for row in fixed_rows]),
        "best right chains by edit": dict(Counter(edit_kind(r.chain, num_layers) for r in fixed_or_right)),
        "skipped in best right chains, by layer": {layer: skips_by_layer[layer] for layer in range(num_layers)},
        "repeated in best right chains, by layer": {layer: repeats_by_layer[layer] for layer in range(num_layers)},
        "mean right chains per sample": mean([row["right chains"] for row in rows]),
    }


def write(output_dir: Path, settings: dict, training: dict, summary: dict, rows: list[dict]) -> list[Path]:
    """`cola.json` (everything, every sample) and `cola.md` (the same, the first samples only)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    machine = bench.describe_machine()
    json_path, markdown_path = output_dir / "cola.json", output_dir / "cola.md"
    record = {"machine": machine, "settings": settings, "training": training, "summary": summary, "samples": rows}
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    layers = range(settings["layers"])
    by_layer = [
        {
            "layer": layer,
            "skipped": summary["skipped in best right chains, by layer"][layer],
            "repeated (extra runs)": summary["repeated in best right chains, by layer"][layer],
        }
        for layer in layers
    ]
    headline = [{"measure": key, "value": value} for key, value in summary.items() if not isinstance(value, dict)]
    shown = rows[:SAMPLE_ROWS_IN_MARKDOWN]
    text = (
        f"# CoLa on addition\n\nMeasured with `benchmarks/cola_addition.py` on {time.strftime('%Y-%m-%d')}. The "
        "reward is an oracle: it checks the chain's sum against the true one, as in the CoLa paper, so the shares "
        "say which chains exist, not what could be picked without the answer.\n\n"
        f"{machine}\n\n## Settings\n\n{markdown_table([settings])}\n## Training\n\n{markdown_table([training])}\n"
        f"## Search\n\n{markdown_table(headline)}\n"
        f"Best right chains by edit: {summary['best right chains by edit']}\n\n"
        f"### Layers left out and repeated in the best right chains\n\n{markdown_table(by_layer)}\n"
        f"## Samples ({len(shown)} of {len(rows)}; all in cola.json)\n\n{markdown_table(shown)}"
    )
    markdown_path.write_text(text)
    return [json_path, markdown_path]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=[3], help="digits of the numbers (mixed)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3000, help="the most training steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--target-accuracy", type=float, default=0.8, help="stop training at this validation share")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between validation scores")
    parser.add_argument("--validation", type=int, default=256, help="held-out rows scored during training")
    parser.add_argument("--samples", type=int, default=200, help="held-out rows searched")
    parser.add_argument("--budget", type=int, default=48, help="chains evaluated per sample, the identity included")
    parser.add_argument("--exploration", type=float, default=1.0, help="the UCT constant")
    parser.add_argument("--length-penalty", type=float, default=0.1)
    parser.add_argument("--block-lengths", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeat-counts", nargs="+", type=int, default=[1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="20 steps, 6 samples, budget 8 (smoke test)")
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results" / "cpu" / "cola"))
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_every, args.validation, args.samples, args.budget = 20, 10, 32, 6, 8
    torch.set_num_threads(args.threads)
    started = time.time()

    train_rows = addition_rows(args.lengths, args.steps * args.batch_size, args.seed)
    seen = set(map(tuple, train_rows["input_ids"]))
    validation = addition_rows(args.lengths, args.validation, args.seed + 1, exclude=seen)
    held_out = addition_rows(args.lengths, args.samples, args.seed + 2, exclude=seen)
    model = build_model(args)
    stopper = StopAtAccuracy(validation, args.target_accuracy, args.eval_every)
    clock = time.time()
    loss = train(model, train_rows, stopper, args)
    training = {
        "steps": stopper.history[-1][0] if stopper.history else 0,
        "validation right": stopper.history[-1][1] if stopper.history else None,
        "reached target": bool(stopper.history) and stopper.history[-1][1] >= args.target_accuracy,
        "final train loss": loss,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train s": time.time() - clock,
    }
    print(training, flush=True)

    samples = [search_sample(row, model.device) for row in held_out]
    stock_answers = [greedy_sum(model, sample) for sample in samples]
    search = CoLaSearch(
        CorrectnessReward(sum_is_right, length_penalty=args.length_penalty),
        budget=args.budget,
        exploration=args.exploration,
        block_lengths=args.block_lengths,
        repeat_counts=args.repeat_counts,
        seed=args.seed,
    )
    clock = time.time()
    results = search.search_all(model, samples)
    search_seconds = time.time() - clock
    rows = sample_table(samples, results, stock_answers)
    summary = summarize(rows, results, len(identity_chain(model)))
    summary["stock: generate disagrees with the check"] = sum(
        (row["stock answer"] == row["sum"]) != row["stock right"] for row in rows
    )
    summary["search s"], summary["total s"] = search_seconds, time.time() - started
    settings = {key: value for key, value in vars(args).items() if key not in ("output_dir", "quick")}
    print(json.dumps(summary, indent=2), flush=True)
    print("written:", ", ".join(map(str, write(Path(args.output_dir), settings, training, summary, rows))))


if __name__ == "__main__":
    main()
