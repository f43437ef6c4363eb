"""Aaren model classes: attention as a many-to-many RNN (`docs/architectures/aaren.md`)."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import Cache
from transformers import initialization as init

from hf_seqplugins import (
    SeqForCausalLM,
    SeqForSequenceClassification,
    SeqForTimeSeriesPrediction,
    SeqModel,
    read_state,
    write_state,
)
from hf_seqplugins.kernels.softmax_scan import softmax_scan, state_shapes

from .configuration import AarenConfig


class AarenMixer(nn.Module):
    """``hidden [B, T, D] -> keys, values [B, T, H, E] -> scores = k · q_h (/ sqrt(E)) [B, T, H] -> softmax-weighted
    prefix means of the values [B, T, H, E] -> out_proj [B, T, D]``.

    Parameters: `query` `[H, E]` (one learned query per head, Xavier-normal init), `k_proj`, `v_proj`
    `[D -> H*E]`, `out_proj` `[H*E -> D]`. The cache holds each head's running maximum, normaliser and
    accumulator `(m [B, H], c [B, H], a [B, H, E])`.
    """

    def __init__(self, config: AarenConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim = config.num_heads, config.head_width
        width = self.num_heads * self.head_dim
        self.query = nn.Parameter(torch.empty(self.num_heads, self.head_dim))
        self.k_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.out_proj = nn.Linear(width, config.hidden_size, bias=False)

    def init_mixer_weights(self) -> None:
        init.xavier_normal_(self.query)

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Per-row shapes of the cached state `(m, c, a)`."""
        return [shape[1:] for shape in state_shapes(1, self.num_heads, self.head_dim)]

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden `[B, T, D]`, attention_mask and resets `[B, T]` bool or None -> `[B, T, D]`."""
        batch, steps, _ = hidden.shape
        keys = self.k_proj(hidden).view(batch, steps, self.num_heads, self.head_dim)
        values = self.v_proj(hidden).view(batch, steps, self.num_heads, self.head_dim)
        scores = torch.einsum("bthe,he->bth", keys, self.query.to(keys.dtype))
        if self.config.use_scale:
            scores = scores / math.sqrt(self.head_dim)
        outputs, state = softmax_scan(
            scores,
            values,
            read_state(cache, self.layer_idx, self.state_shapes()),
            attention_mask,
            resets=resets,
            chunk_size=self.config.chunk_size,
            backend=self.config.kernel_backend,
        )
        write_state(cache, self.layer_idx, state)
        return self.out_proj(outputs.reshape(batch, steps, -1))


class AarenModel(SeqModel):
    config_class = AarenConfig
    mixer_class = AarenMixer


class AarenForCausalLM(SeqForCausalLM):
    config_class = AarenConfig
    backbone_class = AarenModel


class AarenForSequenceClassification(SeqForSequenceClassification):
    config_class = AarenConfig
    backbone_class = AarenModel


class AarenForTimeSeriesPrediction(SeqForTimeSeriesPrediction):
    """Forecasting from real-valued series (the paper's time-series setting): `past_values [B, T, C]` in,
    the next `prediction_length` steps out."""

    config_class = AarenConfig
    backbone_class = AarenModel
