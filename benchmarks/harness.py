"""The benchmark harness: everything side by side in one run, ratios reported, results written with the machine.

    python benchmarks/harness.py [--quick] [--device cuda] [--output-dir benchmarks/results/<cpu|gpu name>]
                                 [--operators NAME ...]   (only these operator suites, no part 1)

1. Architectures (`hf_seqplugins.app.bench.compare`): training tokens/s, prefill, decode ms/token and cache bytes at
   growing lengths, every registered architecture vs a Llama-style attention baseline of the same size; and
   seqp_mamba2 beside transformers' Mamba2 with the same weights.
2. Operators (`benchmarks/operators/<op>.py`): our backends vs the peer libraries installed here on equal
   inputs: forward and forward+backward time, ratio to the case's first implementation, forward GFLOP/s as a
   fraction of the machine's matmul ceiling, and the bytes autograd saves for backward (activation memory).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

import hf_seqplugins
from hf_seqplugins.app import bench
from hf_seqplugins.app.bench import saved_bytes
from hf_seqplugins.app.results import write_results

sys.path.insert(0, str(Path(__file__).parent))
import operators  # noqa: E402


def operator_rows(
    quick: bool, device: torch.device, ceiling: float, repeats: int, names: list[str] | None = None
) -> list[dict]:
    rows = []
    names = names or [m.name for m in pkgutil.iter_modules(operators.__path__)]
    suites = [importlib.import_module(f"operators.{name}") for name in names]
    for case in tqdm([c for suite in suites for c in suite.cases(quick, device)], desc="operators"):
        baseline = None
        for label, forward in case.implementations.items():

            def train_step(forward=forward, inputs=case.inputs):
                forward().float().square().mean().backward()
                for tensor in inputs:
                    tensor.grad = None

            with torch.no_grad():
                forward_ms = bench.median_ms(forward, repeats, device)
            train_ms = bench.median_ms(train_step, repeats, device)
            baseline = baseline or (forward_ms, train_ms)
            rows.append(
                {
                    "operator": case.operator,
                    "shape": case.shape,
                    "implementation": label,
                    "fwd_ms": forward_ms,
                    "fwd_ratio": forward_ms / baseline[0],
                    "fwd_bwd_ms": train_ms,
                    "fwd_bwd_ratio": train_ms / baseline[1],
                    "fwd_gflops": case.flops / forward_ms / 1e6,
                    "fwd_fraction_of_matmul": case.flops / forward_ms / 1e6 / ceiling,
                    "saved_for_backward_mib": saved_bytes(forward) / 2**20,
                }
            )
    return rows


def transformers_peer_rows(lengths: list[int], width: dict | None, batch_size: int, repeats: int, device) -> list[dict]:
    """seqp_mamba2 beside transformers' Mamba2ForCausalLM (its pure-torch path; mamba_ssm is not installed here)
    with the same weights, converted, both without feed-forward: ratios are transformers' / ours."""
    from hf_seqplugins.plugins.mamba2.convert import to_transformers

    width = {"vocab_size": 259, "hidden_size": 128, "num_hidden_layers": 2, **(width or {}), "intermediate_size": 0}
    ours = bench.build_model("seqp_mamba2", width, device)
    models = {"seqp_mamba2 (ours, no FFN)": ours, "transformers Mamba2 (same weights)": to_transformers(ours)}
    rows = []
    for length in lengths:
        scores = {name: bench.measure(model, batch_size, length, 8, repeats, device) for name, model in models.items()}
        base = scores["seqp_mamba2 (ours, no FFN)"]
        for name, score in scores.items():
            rows.append(
                {
                    "model": name,
                    "length": length,
                    **score,
                    "prefill_time_vs_ours": score["prefill_ms"] / base["prefill_ms"],
                    "decode_time_vs_ours": score["decode_ms_per_token"] / base["decode_ms_per_token"],
                }
            )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, one repeat (a smoke test of the harness)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output-dir", help="default: benchmarks/results/cpu, or .../<gpu name> on CUDA")
    suites = sorted(m.name for m in pkgutil.iter_modules(operators.__path__))
    parser.add_argument(
        "--operators",
        nargs="+",
        choices=suites,
        metavar="NAME",
        help=f"run only these operator suites ({', '.join(suites)}) and skip part 1; written to operators_<names>",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    tag = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).replace(" ", "_").lower()
    output_dir = Path(args.output_dir or Path(__file__).parent / "results" / tag)
    repeats = 1 if args.quick else 5
    ceiling = bench.matmul_gflops(device)

    written = []
    if not args.operators:
        architectures = sorted(hf_seqplugins.available_architectures())
        lengths = [16, 32] if args.quick else [64, 256, 1024, 4096]
        width = {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64} if args.quick else None
        model_rows = bench.compare(
            architectures, lengths, width=width, batch_size=1 if args.quick else 4, repeats=repeats, device=device
        )
        written += bench.write_report(model_rows, output_dir, device, "Architectures side by side (harness part 1)")
        peer_rows = transformers_peer_rows(lengths, width, 1 if args.quick else 4, repeats, device)
        written += write_results(
            peer_rows,
            output_dir / "transformers_peers",
            "Our models beside transformers' own (harness part 1b)",
            f"Same weights, converted with the plugin's converter.\n\n{bench.describe_machine(device)}",
        )

    preamble = (
        f"Measured with `python benchmarks/harness.py{' --quick' if args.quick else ''}"
        f"{' --operators ' + ' '.join(args.operators) if args.operators else ''}`. Ratios are to each case's first "
        f"implementation (< 1 is faster). Matmul ceiling on this machine: {ceiling:.1f} GFLOP/s (float32); "
        "`fwd_fraction_of_matmul` = the forward's GFLOP/s over it. `saved_for_backward_mib`: distinct tensors autograd "
        f"keeps for backward.\n\n{bench.describe_machine(device)}"
    )
    stem = "operators" if not args.operators else "operators_" + "_".join(args.operators)
    rows = operator_rows(args.quick, device, ceiling, repeats, args.operators)
    written += write_results(rows, output_dir / stem, "Operators: our backends vs peers (harness part 2)", preamble)
    print("written:", "\n  ".join(["", *map(str, written)]))


if __name__ == "__main__":
    main()
