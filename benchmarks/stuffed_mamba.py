"""Passkey retrieval beyond the training length, with and without Stuffed Mamba's state-collapse options.

    python benchmarks/stuffed_mamba.py [--quick] [--output-dir benchmarks/results/cpu]

Trains a small seqp_mamba2 with `Trainer` on passkey rows of `--train-length` tokens, then evaluates passkey
digit accuracy (chance: 0.1) and the largest per-head state norm at growing lengths, for the plain model and
for each training-free option switched on the same weights: decay scale λ_α (method 1), state-norm clamp at
the largest norm seen at the training length (method 2), and a state-level sliding window (method 3).
Writes `stuffed_mamba.json` / `.md` and `stuffed_mamba.png` (accuracy vs length).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import DynamicCache

from hf_seqplugins.app import bench, tasks, workflows
from hf_seqplugins.app.plots import against_length
from hf_seqplugins.app.results import write_results


@torch.no_grad()
def largest_state_norm(model, rows) -> float:
    """Largest Frobenius norm of any head's SSM state after reading `rows` (prefill)."""
    cache = DynamicCache(config=model.config)
    model(torch.tensor(rows["input_ids"], device=model.device), cache=cache, use_cache=True)
    return max(
        torch.linalg.matrix_norm(layer.mixer.cached_ssm_state(cache)).max().item() for layer in model.model.layers
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps and short lengths (smoke test)")
    parser.add_argument("--train-length", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results" / "cpu"))
    args = parser.parse_args()
    steps = 5 if args.quick else args.max_steps
    lengths = (
        [args.train_length, 2 * args.train_length] if args.quick else [args.train_length * f for f in (1, 2, 4, 8, 16)]
    )
    data = tasks.splits("passkey", num_train=256 if args.quick else 8192, num_test=32, length=args.train_length)
    overrides = {"hidden_size": 128, "num_hidden_layers": 2, "head_dim": 32, "state_size": 32, "chunk_size": 32}
    model, _ = workflows.train(
        "seqp_mamba2",
        data,
        None,
        "outputs/stuffed_mamba",
        max_steps=steps,
        batch_size=32,
        learning_rate=args.learning_rate,
        overrides=overrides,
    )
    # half the largest norm seen at the training length, so the clamp acts
    threshold = largest_state_norm(model, data["test"]) / 2
    variants = {
        "plain": {},
        "decay scale 0.99": {"sc_decay_scale": 0.99},
        f"state norm <= {threshold:.3g}": {"sc_state_norm_threshold": threshold},
        f"sliding window {args.train_length}": {"sc_sliding_window": args.train_length},
    }
    defaults = {
        key: getattr(model.config, key) for key in ("sc_decay_scale", "sc_state_norm_threshold", "sc_sliding_window")
    }
    rows, curves = [], {}
    for name, options in variants.items():
        for key, value in {**defaults, **options}.items():
            setattr(model.config, key, value)
        for length in lengths:
            rows_at_length = tasks.passkey(num_examples=16 if args.quick else 64, length=length, seed=7)
            accuracy = workflows.evaluate(model, rows_at_length, batch_size=8)["accuracy"]
            rows.append(
                {
                    "variant": name,
                    "length": length,
                    "passkey_digit_accuracy": accuracy,
                    "largest_state_norm": largest_state_norm(model, rows_at_length[:8]),
                }
            )
            curves.setdefault(name, []).append((length, accuracy))
            print(rows[-1], flush=True)
    preamble = (
        f"seqp_mamba2 ({overrides}) trained {steps} steps (lr {args.learning_rate}) on passkey rows of "
        f"{args.train_length} tokens, then evaluated with each option switched on the same weights. Digit accuracy "
        f"(chance 0.1) and the largest per-head state norm after reading the rows. The state-norm threshold is half "
        f"the largest norm seen at the training length.\n\n" + bench.describe_machine()
    )
    output_dir = Path(args.output_dir)
    written = write_results(
        rows, output_dir / "stuffed_mamba", "Passkey beyond the training length: Stuffed Mamba options", preamble
    )
    written.append(
        against_length(curves, output_dir / "stuffed_mamba.png", "passkey digit accuracy", "passkey vs length")
    )
    print("written:", ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
