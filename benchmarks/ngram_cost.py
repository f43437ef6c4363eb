"""What n-gram heads cost: training throughput, prefill, decode latency and cache bytes of a GRU with and without
an n-gram head, beside the attention baseline of the same size.

    python benchmarks/ngram_cost.py [--quick] [--output-dir benchmarks/results/cpu/ngram]

An n-gram head's parallel form is quadratic in the length like attention, and its cache (one table entry per
distinct n-gram) grows with the context, unlike the GRU's state.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_seqplugins.app import bench

NGRAM = {"ngram_layers": [1], "ngram_orders": 2}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, one repeat (smoke test)")
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results" / "cpu" / "ngram"))
    args = parser.parse_args()
    lengths = [16, 32] if args.quick else [64, 256, 1024]
    settings = {"repeats": 1 if args.quick else 3, "batch_size": 1 if args.quick else 4}
    width = {"hidden_size": 32, "intermediate_size": 64} if args.quick else {}
    rows = bench.compare(["seqp_gru"], lengths, width=width, **settings)
    with_ngram = bench.compare(["seqp_gru"], lengths, width={**width, **NGRAM}, **settings)
    for row in with_ngram:
        if row["model"] == "seqp_gru":
            rows.append({**row, "model": "seqp_gru + n-gram head (n=2, block 1)"})
    written = bench.write_report(rows, args.output_dir, title="n-gram heads: what they cost")
    print("written:", ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
