"""Causal softmax self-attention as a mixer, for hybrid stacks of attention and recurrent layers.

It computes what a transformers Llama attention layer computes (q/k/v/o projections named alike, grouped
query heads, rotary position embedding of the default type, scaled dot-product attention), so a Llama
decoder's attention weights load into it unchanged. Keys and values live in the block's full-attention
layer of the model's `DynamicCache` (a hybrid config lists that layer as "full_attention" in its
`layer_types`).

A config using it defines `hidden_size`, `num_attention_heads`, `num_key_value_heads`,
`attention_head_dim`, `rope_theta` and `attention_bias`.

`SlidingWindowAttention` is the windowed form with a fixed-size cache (the last W keys and values), a recurrent
state like any other mixer's; a config using it defines `hidden_size`, `num_heads`, `head_width`, `swa_window`
and `rope_theta`.

Positions count real tokens only (left padding shifts nothing: position = number of earlier real
tokens), as transformers does for Llama in `generate`. With `resets` (packed sequences) a query sees only
keys of its own sequence, and positions restart at 0 at every sequence start.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache

from .cache import read_state, write_state
from .sequences import compute_dtype, run_by_segments


def token_positions(history_mask: torch.Tensor | None, batch: int, steps: int, past: int, device) -> torch.Tensor:
    """`[B, T]` positions of the current `steps` tokens: the real tokens before each, from the padding mask of the
    whole history `[B, T_past + T]`, or `past + 0 .. T - 1` when nothing is padded."""
    if history_mask is not None:
        return (history_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -steps:]
    return (past + torch.arange(steps, device=device)).expand(batch, steps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class CausalSelfAttention(nn.Module):
    """Llama-style attention: hidden `[B, T, D]` -> `[B, T, D]`, with a KV cache (`rotary=False`: no rotary
    embedding, for models that add position signals to their inputs).

    Parameters: `q_proj` `[D -> NQ*HD]`, `k_proj`, `v_proj` `[D -> NKV*HD]`, `o_proj` `[NQ*HD -> D]`.
    """

    needs_history_mask = True  # SeqModel passes the whole history's padding mask `[B, T_past + T]`

    def __init__(self, config, layer_idx: int, rotary: bool = True):
        super().__init__()
        self.layer_idx = layer_idx
        self.rotary = rotary
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.attention_head_dim
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.rope_theta = config.rope_theta if rotary else None

    def positions(
        self, history_mask: torch.Tensor | None, batch: int, steps: int, cache: Cache | None, device
    ) -> torch.Tensor:
        """`[B, T]` positions of the current tokens (real tokens before each one)."""
        past = 0 if cache is None else cache.get_seq_length(self.layer_idx)
        return token_positions(history_mask, batch, steps, past, device)

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden `[B, T, D]`; attention_mask: the history's padding mask `[B, T_past + T]` (bool) or None;
        resets `[B, T]` bool or None: True where a packed sequence starts."""
        batch, steps, _ = hidden.shape
        q = self.q_proj(hidden).view(batch, steps, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden).view(batch, steps, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden).view(batch, steps, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if attention_mask is not None:  # padded keys and values are never read (NaN there would leak through SDPA)
            real = attention_mask[:, None, -steps:, None].bool()
            k, v = torch.where(real, k, 0), torch.where(real, v, 0)
        if self.rotary:
            # computed here, not kept as a buffer: transformers leaves non-persistent buffers unset when loading
            dtype = compute_dtype(hidden.dtype)
            inverse_frequency = 1.0 / self.rope_theta ** (
                torch.arange(0, self.head_dim, 2, device=hidden.device, dtype=dtype) / self.head_dim
            )
            positions = self.positions(attention_mask, batch, steps, cache, hidden.device)
            if resets is not None:
                positions = positions - torch.where(resets, positions, 0).cummax(1).values
            angles = positions[..., None].to(dtype) * inverse_frequency
            angles = torch.cat((angles, angles), dim=-1)[:, None]
            cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        total = k.shape[2]
        query_index = torch.arange(total - steps, total, device=hidden.device)[:, None]
        key_index = torch.arange(total, device=hidden.device)
        allowed = (key_index <= query_index)[None, None]
        if attention_mask is not None:
            # a padded query may see no real key at all: let every query see itself so no row is empty (no NaN)
            allowed = (allowed & attention_mask[:, None, None, -total:].bool()) | (key_index == query_index)
        if resets is not None:  # keys of earlier sequences (and of the cache, which precedes them) are out of reach
            query_sequence = resets.long().cumsum(1)
            key_sequence = torch.cat([query_sequence.new_zeros(batch, total - steps), query_sequence], dim=1)
            allowed = allowed & (key_sequence[:, None, None, :] == query_sequence[:, None, :, None])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=self.num_kv_heads != self.num_heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, steps, -1))


def _rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (halves layout, as Llama's) of x `[B, T, H, d]` at positions `[B, T]`, in x's dtype."""
    half = x.shape[-1] // 2
    frequency = theta ** (-torch.arange(half, device=x.device, dtype=x.dtype) / half)
    angles = positions[..., None, None].to(x.dtype) * frequency  # [B, T, 1, d / 2]
    cos, sin = angles.cos(), angles.sin()
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


class SlidingWindowAttention(nn.Module):
    """Causal softmax attention in which a query sees itself and the W - 1 real tokens before it (W = swa_window),
    rotary positions counting real tokens: hidden `[B, T, D]` -> q, k, v `[B, T, H, d]` -> `o_proj` `[B, T, D]`.

    Parameters: `q_proj`, `k_proj`, `v_proj` `[D -> H*d]`, `o_proj` `[H*d -> D]`. The cache is a fixed-size window,
    not a growing KV cache: the rotated keys and values of the W most recent real tokens `[B, H, W, d]` (slot j holds
    real token ``seen - W + j``, zeros before the first) and the real tokens seen `[B, 1]`, in the compute dtype.
    Each call attends over the window plus its own tokens (the masked ``T x (W + T)`` scores: quadratic in the
    call's length at prefill, O(W) per decoded token) and keeps the W most recent real entries."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim, self.window = config.num_heads, config.head_width, config.swa_window
        width = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.o_proj = nn.Linear(width, config.hidden_size, bias=False)

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Per-row shapes of `(keys, values, seen)`."""
        buffer = (self.num_heads, self.window, self.head_dim)
        return [buffer, buffer, (1,)]

    def attend(self, q, k, v, initial_state=None, mask=None):
        """q, k, v `[B, T, H, d]` (compute dtype), state `(keys, values, seen)` or None -> `(y [B, T, H, d], state)`."""
        batch, steps = q.shape[:2]
        window = self.window
        if initial_state is None:
            initial_state = [q.new_zeros(batch, *shape) for shape in self.state_shapes()]
        old_keys, old_values, seen = (s.to(q.dtype) for s in initial_state)
        real = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device) if mask is None else mask
        position = seen + real.cumsum(1).to(q.dtype) - 1  # [B, T] each token's index among the real tokens
        keep = real[..., None, None]
        q = _rotate(q, position, self.config.rope_theta).transpose(1, 2)
        k = torch.where(keep, _rotate(k, position, self.config.rope_theta), 0).transpose(1, 2)
        v = torch.where(keep, v, 0).transpose(1, 2)
        keys, values = torch.cat([old_keys, k], dim=2), torch.cat([old_values, v], dim=2)  # [B, H, W + T, d]
        slot_position = seen - window + torch.arange(window, device=q.device, dtype=q.dtype)  # [B, W]
        key_position = torch.cat([slot_position, position], dim=1)  # [B, W + T]
        key_real = torch.cat([slot_position >= 0, real], dim=1)
        distance = position[:, :, None] - key_position[:, None, :]  # [B, T, W + T]
        allowed = key_real[:, None, :] & (distance >= 0) & (distance < window)
        itself = torch.arange(window + steps, device=q.device) == window + torch.arange(steps, device=q.device)[:, None]
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=(allowed | itself)[:, None])  # no empty row
        new_seen = seen + real.sum(1, keepdim=True).to(q.dtype)
        slot = key_position - (new_seen - window)  # the new window's slot of each entry (< W)
        target = torch.where(key_real & (slot >= 0), slot, window).long()  # the others to a discarded slot W
        target = target[:, None, :, None].expand_as(keys)

        def kept(entries):
            return entries.new_zeros(batch, self.num_heads, window + 1, self.head_dim).scatter(2, target, entries)

        return y.transpose(1, 2), (kept(keys)[:, :, :window], kept(values)[:, :, :window], new_seen)

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden `[B, T, D]`, attention_mask and resets `[B, T]` bool or None -> `[B, T, D]`."""
        batch, steps, _ = hidden.shape
        shape = (batch, steps, self.num_heads, self.head_dim)
        dtype = compute_dtype(hidden.dtype)
        sequences = tuple(p(hidden).view(shape).to(dtype) for p in (self.q_proj, self.k_proj, self.v_proj))
        state = read_state(cache, self.layer_idx, self.state_shapes())
        if resets is None:
            y, state = self.attend(*sequences, initial_state=state, mask=attention_mask)
        else:
            y, state = run_by_segments(self.attend, sequences, resets, attention_mask, state)
        write_state(cache, self.layer_idx, state)
        return self.o_proj(y.to(hidden.dtype).reshape(batch, steps, -1))
