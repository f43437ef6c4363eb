"""Structured state spaces against sequence length: convolution-mode training vs the recurrence vs attention,
decode latency vs context, and a long-input classifier, on whatever machine runs it.

    python benchmarks/s4_scaling.py [--quick] [--output-dir benchmarks/results/cpu]

1. Training (forward + backward + AdamW, batch 1) of seqp_s4d, seqp_s4 and seqp_lssl in convolution mode
   (torch backend; S4 with l_max = T), of seqp_s4d stepping its recurrence (reference backend, up to
   `--recurrence-limit` tokens) and of a Llama attention baseline of the same width, depth and feed-forward.
   `scaling_exponent` is the slope of log(time) against log(T) from the previous length: about 1 for the
   T log T convolution and the linear recurrence, approaching 2 where attention's T^2 dominates.
2. Decoding: ms per generated token after a prompt of each length (prefill, then single-token steps from
   the cache) and the cache's bytes: constant for the state spaces, growing with the KV cache for attention.
3. ListOps (classification, `hf_seqplugins.app.tasks.listops`) at `--listops-length` tokens: a seqp_s4d
   classifier trained with `Trainer` for a few steps: seconds per step and the loss, to show 4k+ inputs
   train on a CPU.

Writes `s4_scaling.json` / `.md` and `s4_training_time.png`, `s4_decode_latency.png`.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from hf_seqplugins.app import bench, tasks, workflows
from hf_seqplugins.app.plots import against_length
from hf_seqplugins.app.results import write_results
from hf_seqplugins.core.backends import use_backend

STATE_SPACES = ["seqp_s4d", "seqp_s4", "seqp_lssl"]


def training_ms(model, length: int, repeats: int, device) -> float:
    """Median ms of one forward + backward + AdamW step on one row of `length` tokens."""
    ids = torch.randint(0, model.config.vocab_size, (1, length), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        model(ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return bench.median_ms(step, repeats, device)


def scaling_rows(lengths, recurrence_limit, width, repeats, device) -> list[dict]:
    runs = [(name, "torch") for name in STATE_SPACES] + [("seqp_s4d", "reference"), (bench.BASELINE, "sdpa")]
    rows = []
    for model_type, backend in tqdm(runs, desc="training"):
        previous = None
        for length in lengths:
            if backend == "reference" and length > recurrence_limit:
                continue
            # S4 computes its kernel at l_max whatever T is: train it at l_max = T, as one would
            settings = {**width, "l_max": length} if model_type == "seqp_s4" else width
            model = bench.build_model(model_type, settings, device)
            with use_backend(None if backend == "sdpa" else backend):
                ms = training_ms(model, length, repeats, device)
            exponent = None if previous is None else math.log(ms / previous[1]) / math.log(length / previous[0])
            rows.append(
                {
                    "part": "training",
                    "model": model_type,
                    "backend": backend,
                    "length": length,
                    "train_ms": ms,
                    "us_per_token": 1e3 * ms / length,
                    "scaling_exponent": exponent,
                }
            )
            previous = (length, ms)
    baseline = {row["length"]: row["train_ms"] for row in rows if row["model"] == bench.BASELINE}
    for row in rows:
        row["train_time_vs_attention"] = row["train_ms"] / baseline[row["length"]]
    return rows


@torch.no_grad()
def decode_rows(contexts, width, device, steps: int = 16) -> list[dict]:
    rows = []
    for model_type in tqdm([*STATE_SPACES, bench.BASELINE], desc="decoding"):
        settings = {**width, "l_max": max(contexts)} if model_type == "seqp_s4" else width
        model = bench.build_model(model_type, settings, device).eval()
        for context in contexts:
            ids = torch.randint(0, model.config.vocab_size, (1, context + steps), device=device)
            cache = DynamicCache(config=model.config)
            prefill_ms = bench.elapsed_ms(
                functools.partial(model, ids[:, :context], cache=cache, use_cache=True), device
            )
            times = [
                bench.elapsed_ms(functools.partial(model, ids[:, t : t + 1], cache=cache, use_cache=True), device)
                for t in range(context, context + steps)
            ]
            rows.append(
                {
                    "part": "decoding",
                    "model": model_type,
                    "length": context,
                    "prefill_ms": prefill_ms,
                    "decode_ms_per_token": sorted(times[1:])[len(times[1:]) // 2],
                    "cache_bytes": bench.cache_bytes(cache),
                }
            )
    baseline = {row["length"]: row["decode_ms_per_token"] for row in rows if row["model"] == bench.BASELINE}
    for row in rows:
        row["decode_time_vs_attention"] = row["decode_ms_per_token"] / baseline[row["length"]]
    return rows


def listops_rows(length: int, steps: int, width: dict) -> list[dict]:
    data = tasks.splits("listops", num_train=16 * steps, num_test=32, length=length)
    start = time.perf_counter()
    model, trainer = workflows.train(
        "seqp_s4d", data, None, "outputs/s4_listops", max_steps=steps, batch_size=8, learning_rate=3e-3, overrides=width
    )
    seconds = time.perf_counter() - start
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    results = workflows.evaluate(model, data["test"])
    return [
        {
            "part": "listops",
            "model": "seqp_s4d",
            "length": length,
            "train_steps": steps,
            "batch_size": 8,
            "seconds_per_step": seconds / steps,
            "first_loss": losses[0],
            "last_loss": losses[-1],
            **results,
        }
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short lengths, one repeat (a smoke test)")
    parser.add_argument("--recurrence-limit", type=int, default=1024, help="longest T for the step loop")
    parser.add_argument("--listops-length", type=int, default=4096)
    parser.add_argument("--listops-steps", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results" / "cpu"))
    args = parser.parse_args()
    device = torch.device(args.device)
    output_dir = Path(args.output_dir)
    width = {"vocab_size": 259, "hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256, "state_size": 64}
    lengths = [64, 128] if args.quick else [256, 512, 1024, 2048, 4096, 8192]
    limit = 64 if args.quick else args.recurrence_limit
    repeats = 1 if args.quick else 3
    rows = scaling_rows(lengths, limit, width, repeats, device)
    rows += decode_rows(lengths, width, device, steps=4 if args.quick else 16)
    small = {key: width[key] for key in ("hidden_size", "num_hidden_layers", "intermediate_size")}
    rows += listops_rows(128 if args.quick else args.listops_length, 2 if args.quick else args.listops_steps, small)

    preamble = (
        f"Measured with `python benchmarks/s4_scaling.py{' --quick' if args.quick else ''}` "
        f"on {time.strftime('%Y-%m-%d')}: "
        f"width {width}, batch 1, float32; the attention baseline is `{bench.BASELINE}` with the same width, depth and "
        f"feed-forward. Ratios are to it at the same length (< 1 is faster). Matmul ceiling: "
        f"{bench.matmul_gflops(device):.1f} GFLOP/s.\n\n{bench.describe_machine(device)}"
    )
    written = write_results(
        rows, output_dir / "s4_scaling", "Structured state spaces against sequence length", preamble
    )

    def series(part: str, key: str) -> dict:
        lines: dict[str, list] = {}
        for row in rows:
            if row["part"] == part:
                label = (
                    row["model"] if row.get("backend", "torch") in ("torch", "sdpa") else f"{row['model']} (recurrence)"
                )
                lines.setdefault(label, []).append((row["length"], row[key]))
        return lines

    written.append(
        against_length(
            series("training", "train_ms"),
            output_dir / "s4_training_time.png",
            "ms per training step",
            "training step vs length (log-log)",
            log_y=True,
        )
    )
    written.append(
        against_length(
            series("decoding", "decode_ms_per_token"),
            output_dir / "s4_decode_latency.png",
            "ms per decoded token",
            "decode latency vs context",
            log_y=True,
        )
    )
    print("written:", "\n  ".join(["", *map(str, written)]))


if __name__ == "__main__":
    main()
