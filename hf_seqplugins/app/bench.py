"""Side-by-side speed and memory of architectures and backends, with an attention baseline of the same size.

For each architecture and backend, at each sequence length T (batch B, float32 unless asked):

- training: tokens per second of one forward + backward + AdamW step on ``[B, T]``;
- prefill: milliseconds of one forward over ``[B, T]`` that also returns the cache;
- decode: milliseconds per token of single-token steps from that cache, and the cache's size in bytes
  (a recurrent state stays the same size; the attention KV cache grows with T).

The baseline is a transformers Llama (attention) of the same width, depth and vocabulary; ratios are
ours / the baseline's at the same length (for training throughput > 1 is faster, for times < 1 is).
The machine's matmul rate (GFLOP/s) is measured in the same run so numbers can be read against it.
Used by ``hf-seqplugins bench`` and by ``benchmarks/harness.py``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, LlamaConfig, LlamaForCausalLM

from ..core.backends import use_backend
from .plots import against_length
from .results import write_results

BASELINE = "llama (attention)"


def describe_machine(device: str | torch.device = "cpu") -> str:
    """CPU model and cores, GPU name, library versions: the header of every results file."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "none used"
    return (
        f"- CPU: {cpu}, {os.cpu_count()} cores, torch threads: {torch.get_num_threads()}\n"
        f"- GPU: {gpu}\n"
        f"- Python {platform.python_version()}, torch {torch.__version__}, {platform.system()} {platform.machine()}"
    )


def elapsed_ms(fn: Callable[[], object], device: str | torch.device = "cpu") -> float:
    """Wall time of one `fn()` in milliseconds (CUDA work included: synchronised before and after)."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def median_ms(fn: Callable[[], object], repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Median of `elapsed_ms(fn)` over `repeats` runs after one warm-up."""
    fn()
    return statistics.median(elapsed_ms(fn, device) for _ in range(repeats))


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves for backward during `fn()`: the activation memory."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def matmul_gflops(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, size: int = 1024) -> float:
    """The machine's dense matmul rate: GFLOP/s of a `size`-square matmul, the ceiling kernels are read against."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    return 2 * size**3 / median_ms(lambda: a @ b, repeats=5, device=device) / 1e6


def cache_bytes(cache) -> int:
    """Bytes held by a transformers cache: attention keys/values plus recurrent and conv states."""
    total = 0
    for layer in cache.layers:
        tensors = [getattr(layer, "keys", None), getattr(layer, "values", None)]
        for states in (getattr(layer, "recurrent_states", None), getattr(layer, "conv_states", None)):
            tensors += list((states or {}).values())
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total


def build_model(model_type: str, width: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A freshly initialised causal LM of `model_type` (or the Llama baseline, `BASELINE`) with `width` settings."""
    torch.manual_seed(0)
    if model_type == BASELINE:
        heads = max(1, width["hidden_size"] // 32)
        sizes = {key: width[key] for key in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size")}
        config = LlamaConfig(
            **sizes, num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1 << 17
        )
        return LlamaForCausalLM(config).to(device)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **width)).to(device)


def measure(model, batch_size: int, length: int, decode_steps: int, repeats: int, device) -> dict:
    """Training tokens/s, prefill ms, decode ms/token and cache bytes of one model at one length."""
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, length + decode_steps), device=device)
    prompt = ids[:, :length]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        model(prompt, labels=prompt, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    train_ms = median_ms(train_step, repeats, device)
    model.eval()
    with torch.no_grad():
        prefill_ms = median_ms(
            lambda: model(prompt, cache=DynamicCache(config=model.config), use_cache=True), repeats, device
        )
        cache = model(prompt, cache=DynamicCache(config=model.config), use_cache=True).cache
        size = cache_bytes(cache)
        decode_times = [
            elapsed_ms(lambda t=t: model(ids[:, t : t + 1], cache=cache, use_cache=True), device)
            for t in range(length, length + decode_steps)
        ]
        decode_ms = statistics.median(decode_times[1:])  # the first step warms up
    return {
        "train_tokens_per_s": batch_size * length / train_ms * 1e3,
        "prefill_ms": prefill_ms,
        "decode_ms_per_token": decode_ms,
        "cache_bytes": size,
    }


def compare(
    model_types: list[str],
    lengths: list[int],
    backends: list[str] = ("auto",),
    width: dict | None = None,
    batch_size: int = 4,
    decode_steps: int = 8,
    repeats: int = 3,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Rows of `measure` for the attention baseline and every (model_type, backend), with ratios to the baseline."""
    width = {"vocab_size": 259, "hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256, **(width or {})}
    runs = [(BASELINE, "sdpa")] + [(model_type, backend) for model_type in model_types for backend in backends]
    rows, baseline = [], {}
    progress = tqdm(total=len(runs) * len(lengths), desc="bench")
    for model_type, backend in runs:
        model = build_model(model_type, width, device)
        params = sum(p.numel() for p in model.parameters())
        for length in lengths:
            progress.set_postfix_str(f"{model_type} {backend} T={length}")
            if model_type == BASELINE:
                scores = measure(model, batch_size, length, decode_steps, repeats, device)
                baseline[length] = scores
            else:
                with use_backend(backend if backend != "auto" else None):
                    scores = measure(model, batch_size, length, decode_steps, repeats, device)
            reference = baseline[length]
            rows.append(
                {
                    "model": model_type,
                    "backend": backend,
                    "params": params,
                    "length": length,
                    **scores,
                    "train_speed_vs_attention": scores["train_tokens_per_s"] / reference["train_tokens_per_s"],
                    "prefill_time_vs_attention": scores["prefill_ms"] / reference["prefill_ms"],
                    "decode_time_vs_attention": scores["decode_ms_per_token"] / reference["decode_ms_per_token"],
                }
            )
            progress.update()
    progress.close()
    return rows


def write_report(
    rows: list[dict],
    output_dir: str | Path,
    device: str | torch.device = "cpu",
    title: str = "Architectures side by side",
) -> list[Path]:
    """`bench.json` / `bench.md` (with the machine and its matmul ceiling) and three PNGs against length."""
    output_dir = Path(output_dir)
    preamble = (
        f"Measured with `hf_seqplugins.app.bench` on {time.strftime('%Y-%m-%d')}; ratios are to `{BASELINE}` at the "
        f"same length (train speed > 1 is faster, times < 1 are faster). Matmul ceiling: {matmul_gflops(device):.1f} "
        "GFLOP/s (float32).\n\n" + describe_machine(device)
    )
    written = write_results(rows, output_dir / "bench", title, preamble)

    def series(key: str, scale: float = 1.0) -> dict:
        lines: dict[str, list] = {}
        for row in rows:
            label = row["model"] if row["backend"] in ("auto", "sdpa") else f"{row['model']} ({row['backend']})"
            lines.setdefault(label, []).append((row["length"], row[key] * scale))
        return lines

    written.append(
        against_length(
            series("decode_ms_per_token"),
            output_dir / "decode_latency.png",
            "ms per decoded token",
            "decode latency vs context",
        )
    )
    written.append(
        against_length(
            series("cache_bytes", 1 / 1024),
            output_dir / "decode_cache.png",
            "cache size (KiB)",
            "cache size vs context",
        )
    )
    written.append(
        against_length(
            series("train_tokens_per_s"),
            output_dir / "train_throughput.png",
            "training tokens / s",
            "training throughput vs length",
        )
    )
    return written
