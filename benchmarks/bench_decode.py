"""Decode cost against context length: recurrent models vs a Llama-style attention baseline of equal width.

    python benchmarks/bench_decode.py [--quick] [--output benchmarks/results/decode_cpu.md]

For each context length L: prefill L tokens, then time `--steps` single-token decoding steps from the
cache; report milliseconds per token and the cache size in bytes, side by side, with a PNG plot. A
recurrent state is O(1) in L; the attention KV cache grows linearly.
"""
import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, LlamaConfig, LlamaForCausalLM

import hf_seqplugins  # noqa: F401  (registers the architectures)
from hf_seqplugins.plots import against_length

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402

WIDTH = dict(vocab_size=259, hidden_size=128, num_hidden_layers=2, intermediate_size=256)


def models():
    torch.manual_seed(0)
    yield "llama (attention)", LlamaForCausalLM(LlamaConfig(**WIDTH, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1 << 16))
    for model_type, extra in (("seqp_lstm", {}), ("seqp_slstm", {"num_heads": 4})):
        yield model_type, AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **WIDTH, **extra))


def cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            total += tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0
        for states in (getattr(layer, "recurrent_states", {}), getattr(layer, "conv_states", {})):
            total += sum(t.numel() * t.element_size() for t in states.values() if t is not None)
    return total


@torch.no_grad()
def measure(model, context: int, steps: int) -> tuple[float, int]:
    ids = torch.randint(0, WIDTH["vocab_size"], (1, context + steps))
    cache = DynamicCache(config=model.config)
    out = model(ids[:, :context], cache=cache, use_cache=True)
    times = []
    for t in range(context, context + steps):
        start = time.perf_counter()
        out = model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), cache_bytes(out.cache)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short contexts (smoke test)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--output", default="benchmarks/results/decode_cpu.md")
    args = parser.parse_args()
    contexts = [16, 64] if args.quick else [64, 256, 1024, 4096]
    lines = [
        "# Decode cost vs context length (CPU, float32, batch 1)",
        "",
        f"Measured {date.today()} with `python benchmarks/bench_decode.py`: prefill L tokens, then the median of "
        f"{args.steps} single-token steps from the cache. Models: {WIDTH}; ratio = ms per token / the attention baseline's.",
        "",
        describe(),
        "",
        "| model | context | ms / token | ratio | cache bytes |",
        "|---|---|---|---|---|",
    ]
    latency, memory = {}, {}
    baseline = {}
    for name, model in models():
        model.eval()
        for context in contexts:
            ms, size = measure(model, context, args.steps)
            baseline.setdefault(context, ms)
            latency.setdefault(name, []).append((context, ms))
            memory.setdefault(name, []).append((context, size / 1024))
            row = f"| {name} | {context} | {ms:.2f} | {ms / baseline[context]:.2f} | {size:,} |"
            print(row, flush=True)
            lines.append(row)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    latency_png = against_length(latency, output.with_name(output.stem + "_latency.png"), "ms per decoded token", "decode latency vs context")
    memory_png = against_length(memory, output.with_name(output.stem + "_cache.png"), "cache size (KiB)", "cache size vs context")
    lines += ["", f"Plots: `{latency_png.name}`, `{memory_png.name}`."]
    output.write_text("\n".join(lines) + "\n")
    print(f"written to {output}")


if __name__ == "__main__":
    main()
