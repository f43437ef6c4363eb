"""TCNCA's mixer against full causal attention as the sequence grows, on whatever machine runs it.

    python benchmarks/tcnca_scaling.py [--quick] [--output-dir benchmarks/results/cpu/tcnca]

One block mixer, batch 1, float32, forward and forward + backward (gradients of the input and every parameter):

- `seqp_tcnca`: `TCNCAMixer` (RMSNorm, the dilated TCN through the `dilated_conv` operator on its default
  backend, the gates, softmax attention inside chunks of `chunk_size` tokens);
- `attention`: full causal softmax attention of the same width (query, key, value and output projections of
  `hidden_size`, `num_heads` heads, `F.scaled_dot_product_attention(is_causal=True)`).

`forward_vs_attention` / `backward_vs_attention` are the time ratios at the same length (< 1 is faster);
`scaling_exponent` is the slope of log(time) against log(T) from the previous length (about 1 for TCNCA's
linear cost, approaching 2 for attention). Writes `scaling.json` / `.md` and `scaling.png`.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hf_seqplugins.app import bench
from hf_seqplugins.app.plots import against_length
from hf_seqplugins.app.results import write_results
from hf_seqplugins.plugins.tcnca import TCNCAConfig, TCNCAModel


class CausalAttention(nn.Module):
    """Multi-head causal self-attention: `[B, T, D] -> [B, T, D]`."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, width = x.shape
        q, k, v = self.qkv(x).view(batch, steps, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(out.transpose(1, 2).reshape(batch, steps, width))


def build(name: str, settings: dict, device) -> nn.Module:
    if name == "attention":
        return CausalAttention(settings["hidden_size"], settings["num_heads"]).to(device)
    config = TCNCAConfig(**{k: v for k, v in settings.items() if k != "num_heads"}, vocab_size=8, num_hidden_layers=1)
    return TCNCAModel(config).layers[0].mixer.to(device)


def timings(module: nn.Module, length: int, width: int, repeats: int, device) -> tuple[float, float]:
    """Median ms of a forward pass and of a forward + backward pass on one row of `length` tokens."""
    x = torch.randn(1, length, width, device=device, requires_grad=True)

    def forward():
        with torch.no_grad():
            module(x)

    def forward_backward():
        module(x).sum().backward()

    return bench.median_ms(forward, repeats, device), bench.median_ms(forward_backward, repeats, device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short lengths, one repeat (a smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads (1 on a shared, busy machine)"
    )
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results" / "cpu" / "tcnca"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    settings = {
        "hidden_size": 64,
        "num_heads": 4,
        "zdim": 32,
        "hdim": 128,
        "chunk_size": 128,
        "tcn_kernel_size": 3,
        "tcn_dilation_factor": 2,
        "tcn_depth": 4,
        "intermediate_size": 0,
    }
    lengths = [256, 512] if args.quick else [1024, 4096, 16384, 32768]
    repeats = 1 if args.quick else 3
    rows = []
    for name in tqdm(["seqp_tcnca", "attention"], desc="mixers"):
        torch.manual_seed(0)
        module = build(name, settings, device).train()
        previous = None
        for length in lengths:
            forward_ms, backward_ms = timings(module, length, settings["hidden_size"], repeats, device)
            exponent = (
                None if previous is None else math.log(backward_ms / previous[1]) / math.log(length / previous[0])
            )
            rows.append(
                {
                    "mixer": name,
                    "length": length,
                    "forward_ms": forward_ms,
                    "forward_backward_ms": backward_ms,
                    "scaling_exponent": exponent,
                }
            )
            previous = (length, backward_ms)
    baseline = {row["length"]: row for row in rows if row["mixer"] == "attention"}
    for row in rows:
        row["forward_vs_attention"] = row["forward_ms"] / baseline[row["length"]]["forward_ms"]
        row["backward_vs_attention"] = row["forward_backward_ms"] / baseline[row["length"]]["forward_backward_ms"]

    preamble = (
        f"Measured with `python benchmarks/tcnca_scaling.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d')}: one mixer, batch 1, float32, {settings}; the attention baseline has the same "
        f"width ({settings['num_heads']} heads, SDPA with `is_causal`). `scaling_exponent` is that of the forward + "
        f"backward time from the previous length. Matmul ceiling: {bench.matmul_gflops(device):.1f} GFLOP/s.\n\n"
        f"{bench.describe_machine(device)}"
    )
    output_dir = Path(args.output_dir)
    written = write_results(rows, output_dir / "scaling", "TCNCA's mixer against causal attention", preamble)
    lines: dict[str, list] = {}
    for row in rows:
        lines.setdefault(row["mixer"], []).append((row["length"], row["forward_backward_ms"]))
    written.append(
        against_length(
            lines, output_dir / "scaling.png", "ms per forward + backward", "mixer time vs length (log-log)", log_y=True
        )
    )
    print(Path(written[1]).read_text())
    print("written:", "\n  ".join(["", *map(str, written)]))


if __name__ == "__main__":
    main()
