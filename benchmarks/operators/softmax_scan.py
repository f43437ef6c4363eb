"""Aaren's softmax-weighted prefix scan (`hf_seqplugins.kernels.softmax_scan`): our backends beside the plain
quadratic form it replaces (causal softmax attention with one fixed query per head, as SDPA with a query per
position repeated), forward and forward + backward, B1 H4 D64 at growing lengths."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_seqplugins.kernels.softmax_scan import softmax_scan

from . import Case

BATCH, HEADS, DIM = 1, 4, 64


def attention_with_a_fixed_query(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The same outputs from causal softmax attention: every position's query scores the keys with `scores`."""
    steps = scores.shape[1]
    logits = scores.transpose(1, 2)[:, :, None, :].expand(-1, -1, steps, -1)  # [B, H, T(query), T(key)]
    causal = torch.ones(steps, steps, dtype=torch.bool, device=scores.device).tril()
    weights = F.softmax(logits.masked_fill(~causal, -torch.inf), dim=-1)
    return (weights @ values.transpose(1, 2)).transpose(1, 2)


def case(steps: int, device: torch.device, quick: bool) -> Case:
    torch.manual_seed(0)
    scores = torch.randn(BATCH, steps, HEADS, device=device).mul(3).requires_grad_()
    values = torch.randn(BATCH, steps, HEADS, DIM, device=device).requires_grad_()
    implementations = {
        "ours: torch (chunked scan)": lambda: softmax_scan(scores, values, backend="torch")[0],
        "ours: doubling scan": lambda: softmax_scan(scores, values, backend="doubling")[0],
    }
    if quick or steps <= 1024:  # the loop costs T Python steps
        implementations["ours: reference loop"] = lambda: softmax_scan(scores, values, backend="reference")[0]
    if steps <= 4096:  # T x T memory
        implementations["quadratic: causal softmax attention"] = lambda: attention_with_a_fixed_query(scores, values)
    if device.type == "cuda":
        implementations["ours: triton"] = lambda: softmax_scan(scores, values, backend="triton")[0]
    return Case(
        "softmax_scan (Aaren)",
        f"B{BATCH} H{HEADS} D{DIM} T{steps}",
        4 * BATCH * steps * HEADS * DIM,
        [scores, values],
        implementations,
    )


def cases(quick: bool, device: torch.device) -> list[Case]:
    lengths = [32] if quick else [256, 1024, 4096, 16384]
    return [case(steps, device, quick) for steps in lengths]
