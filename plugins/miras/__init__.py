"""Miras (`docs/architectures/miras.md`): Moneta, Yaad and Memora, language models whose mixer is a per-head MLP
memory trained online on the keys and values by an attentional bias with a retention gate, optionally with
sliding-window attention in chosen blocks."""

from .configuration import MirasConfig
from .modeling import (
    MirasForCausalLM,
    MirasForSequenceClassification,
    MirasMixer,
    MirasModel,
    SlidingWindowAttention,
)

__all__ = [
    "MirasConfig",
    "MirasForCausalLM",
    "MirasForSequenceClassification",
    "MirasMixer",
    "MirasModel",
    "SlidingWindowAttention",
]
