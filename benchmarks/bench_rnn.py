"""LSTM / GRU side by side: our backends vs torch.nn's fused kernels and FlashRNN's vanilla kernels.

    python benchmarks/bench_rnn.py [--quick] [--output benchmarks/results/rnn_cpu.md]

Every row runs the same layer (same weights) through each implementation, forward and
forward+backward, and reports the median time and its ratio to `torch.nn` in one table.
"""
import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_seqplugins.kernels.rnn import headwise_rnn
from hf_seqplugins.plugins.rnn import GRU, LSTM

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402

LAYERS = {"LSTM": (torch.nn.LSTM, LSTM, "lstm"), "GRU": (torch.nn.GRU, GRU, "gru")}


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def operator_call(layer, cell, backend):
    """The layer's math through `headwise_rnn` with `backend` (input projection included)."""
    hidden = layer.hidden_size
    gates = layer.weight_ih_l0.shape[0] // hidden

    def run(x):
        gates_x = F.linear(x, layer.weight_ih_l0, layer.bias_ih_l0).view(x.shape[0], x.shape[1], gates, 1, hidden)
        recurrent_weight = layer.weight_hh_l0.view(gates, 1, hidden, hidden)
        outputs, _ = headwise_rnn(cell, gates_x, recurrent_weight, layer.bias_hh_l0.view(gates, 1, hidden), backend=backend)
        return outputs

    return run


def implementations(name, hidden):
    torch_cls, ours_cls, cell = LAYERS[name]
    theirs = torch_cls(hidden, hidden, batch_first=True)
    impls = {"torch.nn (fused)": lambda x: theirs(x)[0]}
    for backend in ("torch", "reference"):
        ours = ours_cls(hidden, hidden, batch_first=True, backend=backend)
        ours.load_state_dict(theirs.state_dict())
        impls[f"drop-in {name}({backend!r})"] = lambda x, m=ours: m(x)[0]
    impls["operator 'torch' (bmm loop)"] = operator_call(theirs, cell, "torch")
    try:
        import flashrnn  # noqa: F401

        impls["flashrnn vanilla"] = operator_call(theirs, cell, "flashrnn")
    except ImportError:
        pass
    return impls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small shape, few repeats (smoke test)")
    parser.add_argument("--output", default="benchmarks/results/rnn_cpu.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    shapes = [(2, 32, 64)] if args.quick else [(1, 256, 256), (16, 256, 256), (16, 64, 512)]
    repeats = 3 if args.quick else 7

    lines = [
        "# LSTM / GRU backends vs torch.nn (CPU, float32)",
        "",
        f"Measured {date.today()} with `python benchmarks/bench_rnn.py`; median of {repeats} runs after one warm-up.",
        "Ratio = time / torch.nn's time for the same layer and pass (lower is faster).",
        "`torch.nn` and the drop-in layer's 'torch' backend run the same PyTorch kernel: their ratio shows the noise.",
        "",
        describe(),
        "",
        "| layer | B | T | H | implementation | fwd ms | fwd ratio | fwd+bwd ms | fwd+bwd ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in LAYERS:
        for batch, steps, hidden in shapes:
            x = torch.randn(batch, steps, hidden, requires_grad=True)
            base = None
            for label, fn in implementations(name, hidden).items():
                with torch.no_grad():
                    forward = median_ms(lambda: fn(x), repeats)
                backward = median_ms(lambda: fn(x).sum().backward(), repeats)
                base = base or (forward, backward)
                row = f"| {name} | {batch} | {steps} | {hidden} | {label} | {forward:.2f} | {forward / base[0]:.2f} | {backward:.2f} | {backward / base[1]:.2f} |"
                print(row, flush=True)
                lines.append(row)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
