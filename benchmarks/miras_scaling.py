"""Miras' three memories against Mamba-2, xLSTM and attention as the sequence grows: training time and memory.

    python benchmarks/miras_scaling.py [--quick] [--threads N] [--output-dir benchmarks/results/cpu/miras]

Causal LMs of the same width and depth (`WIDTH`), freshly initialised, batch 1, float32, the default kernel
backend of each; per length one training step (forward and backward of the LM loss, AdamW):

- `train_ms` (median of the repeats) and `train_tokens_per_s`;
- `activation_mib`: the bytes autograd saves for the backward (distinct storages), the memory that grows with T.
  Miras' memory checkpoints each chunk, so it keeps the chunk-boundary states and recomputes a chunk in the
  backward; on a GPU `peak_cuda_mib` is the allocator's peak too;
- `*_vs_attention`: ratios to the Llama baseline at the same length (< 1: faster / smaller).

Writes `scaling.json` / `.md` and `scaling.png` (training time against length, log-log).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hf_seqplugins.app import bench
from hf_seqplugins.app.bench import saved_bytes
from hf_seqplugins.app.plots import against_length
from hf_seqplugins.app.results import write_results

WIDTH = {"vocab_size": 259, "hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256}
MODELS = {
    bench.BASELINE: {},
    "seqp_mamba2": {},
    "seqp_xlstm": {},
    "seqp_miras (yaad)": {"memory_variant": "yaad", "num_heads": 4},
    "seqp_miras (moneta)": {"memory_variant": "moneta", "num_heads": 4},
    "seqp_miras (memora)": {"memory_variant": "memora", "num_heads": 4},
}


def measure(model: torch.nn.Module, length: int, repeats: int, device: torch.device) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (1, length), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forward_backward():
        model(ids, labels=ids, use_cache=False).loss.backward()

    def train_step():
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    train_ms = bench.median_ms(train_step, repeats, device)
    activation = saved_bytes(lambda: model(ids, labels=ids, use_cache=False).loss)
    row = {"train_ms": train_ms, "train_tokens_per_s": length / train_ms * 1e3, "activation_mib": activation / 2**20}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        train_step()
        row["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short lengths, one repeat (a smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results" / "cpu" / "miras"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    lengths = [64, 128] if args.quick else [256, 1024, 4096]
    repeats = 1 if args.quick else 3
    rows, baseline = [], {}
    for name in tqdm([bench.BASELINE, *[m for m in args.models if m != bench.BASELINE]], desc="models"):
        model_type = name.split(" ")[0] if name != bench.BASELINE else name
        model = bench.build_model(model_type, {**WIDTH, **MODELS[name]}, device)
        params = sum(p.numel() for p in model.parameters())
        for length in lengths:
            row = {"model": name, "params": params, "length": length, **measure(model, length, repeats, device)}
            if name == bench.BASELINE:
                baseline[length] = row
            reference = baseline[length]
            row["train_time_vs_attention"] = row["train_ms"] / reference["train_ms"]
            row["activation_vs_attention"] = row["activation_mib"] / reference["activation_mib"]
            rows.append(row)
    preamble = (
        f"Measured with `python benchmarks/miras_scaling.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d')}: causal LMs {WIDTH} (Miras with {MODELS['seqp_miras (yaad)']['num_heads']} "
        f"heads, its defaults otherwise: memory_chunk 16, expansion 4), batch 1, float32, one AdamW step per "
        f"repeat ({repeats}). `activation_mib`: bytes saved for the backward.\n\n{bench.describe_machine(device)}"
    )
    output_dir = Path(args.output_dir)
    written = write_results(rows, output_dir / "scaling", "Miras against Mamba-2, xLSTM and attention", preamble)
    lines: dict[str, list] = {}
    for row in rows:
        lines.setdefault(row["model"], []).append((row["length"], row["train_ms"]))
    plot = against_length(
        lines, output_dir / "scaling.png", "ms per training step", "training step vs length", log_y=True
    )
    written.append(plot)
    print(Path(written[1]).read_text())
    print("written:", "\n  ".join(["", *map(str, written)]))


if __name__ == "__main__":
    main()
