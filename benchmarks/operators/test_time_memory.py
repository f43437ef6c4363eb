"""Miras' test-time memory (`hf_seqplugins.kernels.test_time_memory`), Yaad and Memora, chunks of 16: the
chunk-parallel torch backend (dual form; Memora's materialised reads), its chunk-start retrieval, the Triton kernel
on a GPU, and the reference token loop (autograd inner gradients, nothing checkpointed), B1 H4 D32 E128 (the
paper's expansion 4) at growing lengths. The saved-bytes column shows the per-chunk checkpointing."""

from __future__ import annotations

import torch

from hf_seqplugins.kernels.test_time_memory import test_time_memory

from . import Case

BATCH, HEADS, DIM, CHUNK = 1, 4, 32, 16
HIDDEN = 4 * DIM


def case(variant: str, steps: int, device: torch.device, quick: bool) -> Case:
    torch.manual_seed(0)

    def unit(x):
        return x / x.norm(dim=-1, keepdim=True)

    q = unit(torch.randn(BATCH, steps, HEADS, DIM, device=device)).requires_grad_()
    k = unit(torch.randn(BATCH, steps, HEADS, DIM, device=device)).requires_grad_()
    v = torch.randn(BATCH, steps, HEADS, DIM, device=device).requires_grad_()
    gates = [0.1 * torch.rand(BATCH, steps, HEADS, 1), 0.95 + 0.05 * torch.rand(BATCH, steps, HEADS, 1)]
    if variant == "yaad":
        gates.append(torch.ones(BATCH, steps, HEADS, 1))
    gates = torch.cat(gates, -1).to(device).requires_grad_()
    memory = (
        (torch.randn(HEADS, DIM, HIDDEN, device=device) / HIDDEN**0.5).requires_grad_(),
        (torch.randn(HEADS, HIDDEN, DIM, device=device) / DIM**0.5).requires_grad_(),
    )

    def ours(backend: str, retrieval: str = "dual_form"):
        def run():
            return test_time_memory(
                q, k, v, gates, memory, variant=variant, memory_chunk=CHUNK, retrieval=retrieval, backend=backend
            )[0]

        return run

    implementations = {
        "ours: torch (dual form)": ours("torch"),
        "ours: torch, chunk-start retrieval": ours("torch", "chunk_start"),
    }
    if device.type == "cuda" and variant != "memora":
        implementations["ours: triton"] = ours("triton")
    if quick or steps <= 256:  # the loop costs T Python steps, each a double backward
        implementations["ours: reference loop"] = ours("reference")
    # per token: the memory forward and backward on the key (~6 D E) and the read (~2 D E at the chunk start,
    # plus the chunk's b x b dual-form products ~ 2 b (D + E) per token)
    flops = 2 * BATCH * steps * HEADS * (8 * DIM * HIDDEN + 2 * CHUNK * (DIM + HIDDEN))
    return Case(
        f"test_time_memory ({variant})",
        f"B{BATCH} H{HEADS} D{DIM} E{HIDDEN} b{CHUNK} T{steps}",
        flops,
        [q, k, v, gates, *memory],
        implementations,
    )


def cases(quick: bool, device: torch.device) -> list[Case]:
    lengths = [32] if quick else [256, 1024, 4096]
    return [case(variant, steps, device, quick) for variant in ("yaad", "memora") for steps in lengths]
