"""xLSTM model classes: the xLSTM-7B mLSTM layer (`docs/architectures/xlstm.md`, section 'xLSTM-7B block') in the shared
pre-norm blocks."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import Cache
from transformers import initialization as init

from hf_seqplugins import (
    GatedFeedForward,
    SeqForCausalLM,
    SeqForSequenceClassification,
    SeqModel,
    compute_dtype,
    read_state,
    write_state,
)
from hf_seqplugins.kernels.mlstm import mlstm, state_shapes
from hf_seqplugins.plugins.rnn.modeling import HeadwiseRNNMixer

from .configuration import XLSTMConfig


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(x / cap)``; no cap for 0 or None."""
    return cap * torch.tanh(x / cap) if cap else x


class MultiHeadLayerNorm(nn.Module):
    """LayerNorm over each head's DV features separately (weight only, statistics in at least float32)."""

    def __init__(self, num_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h `[B, T, NH, DV]` -> `[B, T, NH * DV]`."""
        h32 = h.to(compute_dtype(h.dtype))
        h32 = (h32 - h32.mean(-1, keepdim=True)) * torch.rsqrt(h32.var(-1, unbiased=False, keepdim=True) + self.eps)
        return h32.to(h.dtype).flatten(-2) * self.weight


class MLSTMLayer(nn.Module):
    """The xLSTM-7B mLSTM layer: q, k, v, output gate and soft-capped input/forget gates from x, the mLSTM
    recurrence per head, a per-head LayerNorm, the sigmoid output gate and `out_proj`.

    Widths: `q_proj`, `k_proj` `[D -> NH*DK]`, `v_proj`, `ogate_proj` `[D -> NH*DV]`, `igate_proj`,
    `fgate_proj` `[D -> NH]` (with bias), `out_proj` `[NH*DV -> D]`.
    """

    def __init__(self, config: XLSTMConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        heads, dk, dv, width = config.num_heads, config.qk_head_dim, config.v_head_dim, config.hidden_size
        self.num_heads, self.qk_head_dim, self.v_head_dim = heads, dk, dv
        self.q_proj = nn.Linear(width, heads * dk, bias=config.use_bias)
        self.k_proj = nn.Linear(width, heads * dk, bias=config.use_bias)
        self.v_proj = nn.Linear(width, heads * dv, bias=config.use_bias)
        self.ogate_proj = nn.Linear(width, heads * dv, bias=config.use_bias)
        self.igate_proj = nn.Linear(width, heads)
        self.fgate_proj = nn.Linear(width, heads)
        self.multihead_norm = MultiHeadLayerNorm(heads, dv, config.norm_eps)
        self.out_proj = nn.Linear(heads * dv, width, bias=config.use_bias)

    def init_mixer_weights(self) -> None:
        """xLSTM-7B init: zero gate weights, input-gate bias -10 (gates start nearly closed), forget-gate biases
        spread from 3 to 6 over the heads (long memory), `out_proj` scaled down with depth ("wang" init)."""
        init.zeros_(self.igate_proj.weight)
        init.zeros_(self.fgate_proj.weight)
        init.constant_(self.igate_proj.bias, -10.0)
        init.copy_(self.fgate_proj.bias, torch.linspace(3.0, 6.0, self.num_heads))
        init.normal_(self.out_proj.weight, std=2 / (self.config.num_hidden_layers * math.sqrt(self.config.hidden_size)))

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Per-row shapes of the cached state `(C, n, m)`."""
        return [shape[1:] for shape in state_shapes(1, self.num_heads, self.qk_head_dim, self.v_head_dim)]

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden `[B, T, D]`, attention_mask and resets `[B, T]` bool or None -> `[B, T, D]`."""
        batch, steps, _ = hidden.shape
        cap = self.config.gate_soft_cap

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, steps, self.num_heads, -1)

        h, final_state = mlstm(
            heads(self.q_proj(hidden)),
            heads(self.k_proj(hidden)),
            heads(self.v_proj(hidden)),
            soft_cap(self.igate_proj(hidden), cap),
            soft_cap(self.fgate_proj(hidden), cap),
            initial_state=read_state(cache, self.layer_idx, self.state_shapes()),
            mask=attention_mask,
            resets=resets,
            input_gate=self.config.input_gate,
            normalize=self.config.normalize,
            eps=self.config.mlstm_eps,
            chunk_size=self.config.chunk_size,
            backend=self.config.kernel_backend,
        )
        write_state(cache, self.layer_idx, final_state)
        h = self.multihead_norm(h)
        return self.out_proj(torch.sigmoid(self.ogate_proj(hidden)) * h)


class SLSTMBlockConfig:
    """What the RNN family's sLSTM mixer reads, seen through an xLSTM config: its own head count and size, the
    rest (kernel_backend included, so changing it on the model reaches these blocks too) from the parent."""

    cell_name = "slstm"

    def __init__(self, parent: XLSTMConfig):
        self.parent = parent
        self.num_heads = parent.slstm_num_heads
        self.head_dim = parent.hidden_size // parent.slstm_num_heads

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "parent":  # copy/pickle probe these before __init__ has run
            raise AttributeError(name)
        return getattr(self.parent, name)


def xlstm_mixer(config: XLSTMConfig, layer_idx: int) -> nn.Module:
    """The mixer of block `layer_idx`: an `MLSTMLayer`, or the RNN family's sLSTM mixer where the pattern says "s"."""
    if config.block_types[layer_idx] == "m":
        return MLSTMLayer(config, layer_idx)
    return HeadwiseRNNMixer(SLSTMBlockConfig(config), layer_idx)


class WangInitFeedForward:
    """Mixin: the feed-forward's `down_proj` gets xLSTM-7B's depth-scaled init, N(0, 2 / (L sqrt(d_in)))."""

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, GatedFeedForward):
            fan_in = module.down_proj.in_features
            init.normal_(module.down_proj.weight, std=2 / (self.config.num_hidden_layers * math.sqrt(fan_in)))


class XLSTMModel(WangInitFeedForward, SeqModel):
    config_class = XLSTMConfig
    mixer_class = staticmethod(xlstm_mixer)


class XLSTMForCausalLM(WangInitFeedForward, SeqForCausalLM):
    config_class = XLSTMConfig
    backbone_class = XLSTMModel


class XLSTMForSequenceClassification(WangInitFeedForward, SeqForSequenceClassification):
    config_class = XLSTMConfig
    backbone_class = XLSTMModel
