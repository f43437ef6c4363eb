"""TCNCA model classes: MEGA's gated attention block with a temporal convolution network in place of its EMA
and softmax attention inside chunks (`docs/architectures/tcnca.md`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache
from transformers import initialization as init

from hf_seqplugins import (
    RMSNorm,
    SeqForCausalLM,
    SeqForSequenceClassification,
    SeqModel,
    compute_dtype,
    read_state,
    write_state,
)
from hf_seqplugins.kernels.dilated_conv import dilated_conv, state_shapes

from .configuration import TCNCAConfig


def _chunk_layout(real, starts, count, chunk_size):
    """Where every token sits in the chunk layout.

    real, starts `[B, T]` bool (real tokens; real tokens that start a packed sequence), count `[B]` long: real
    tokens of the row's current sequence before this call. Returns `(index [B, T]` slot in a `[B, N * C]` layout,
    pads at N * C, `position [B, T]` of each real token in its own sequence, `chunks` N, `last [B]` the chunk of
    the row's last real token, 0 for a row without one). Chunk 0 continues the chunk of the cached tokens.
    """
    real_count = real.long().cumsum(1)  # real tokens up to and including t
    before_start = torch.where(starts, real_count - 1, 0).cummax(1).values  # real tokens before the latest start
    first = starts.long().cumsum(1) == 0  # still in the row's first sequence, which continues the cache
    position = torch.where(first, count[:, None], 0) + real_count - 1 - before_start
    slot = position % chunk_size
    opens = real & (starts | (slot == 0))  # a real token that begins a new chunk
    continues = (count % chunk_size != 0).long()[:, None]  # the cached chunk is chunk 0 and is still open
    chunk = opens.long().cumsum(1) - 1 + continues
    chunks = max(int(chunk.max()) + 1, 1) if real.any() else 1
    index = torch.where(real, chunk * chunk_size + slot, chunks * chunk_size)
    last = torch.where(real, chunk, 0).max(1).values.clamp(min=0)
    return index, position, chunks, last


def _relative_scores(bias, dtype):
    """`[C, C]`: the bias of each causal (query slot, key slot) pair, -inf above the diagonal."""
    slots = torch.arange(bias.shape[0], device=bias.device)
    offset = slots[:, None] - slots[None, :]
    return torch.where(offset >= 0, bias[offset.clamp(min=0)].to(dtype), -torch.inf)


def _aligned_chunked_attention(q, k, v, bias, count, dropout_p):
    """`chunked_attention` where no row has padding or packed sequences and every row's chunk grid starts at
    the first token (count a multiple of C): chunk n is tokens nC .. nC + C - 1, the last one padded at its end
    (causality keeps the padded keys away from every real query)."""
    batch, steps, zdim = q.shape
    chunk_size = bias.shape[0]
    chunks = -(-steps // chunk_size)
    pad = chunks * chunk_size - steps

    def lay_out(x):
        return F.pad(x, (0, 0, 0, pad)).view(batch * chunks, chunk_size, x.shape[-1])

    keys, values = lay_out(k), lay_out(v)
    outputs = F.scaled_dot_product_attention(
        lay_out(q),
        keys,
        values,
        attn_mask=_relative_scores(bias, q.dtype),
        dropout_p=dropout_p,
        scale=1.0 / math.sqrt(zdim),
    ).view(batch, chunks * chunk_size, -1)[:, :steps]
    last = slice((chunks - 1) * chunk_size, chunks * chunk_size)
    new_state = (
        keys.view(batch, chunks * chunk_size, zdim)[:, last],
        values.view(batch, chunks * chunk_size, -1)[:, last],
        (count + steps).to(compute_dtype(q.dtype)),
    )
    return outputs, new_state


def _one_token_attention(q, k, v, bias, state, mask, dropout_p):
    """`chunked_attention` of one token per row: it takes slot n mod C of the cached chunk (n = count; slot 0
    opens a new chunk) and attends to slots 0 .. n mod C; a padded token leaves the state as it was."""
    cached_keys, cached_values, count = state
    slots = torch.arange(bias.shape[0], device=q.device)
    slot = (count % bias.shape[0])[:, None]  # [B, 1]
    seen = slots[None, :] <= slot  # [B, C]: the chunk so far and the new token
    here = (slots[None, :] == slot)[..., None]
    keys = torch.where(seen[..., None], torch.where(here, k, cached_keys.to(k.dtype)), 0)  # [B, C, Z]
    values = torch.where(seen[..., None], torch.where(here, v, cached_values.to(v.dtype)), 0)
    scores_bias = torch.where(seen, bias[(slot - slots[None, :]).clamp(min=0)].to(q.dtype), -torch.inf)
    outputs = F.scaled_dot_product_attention(
        q, keys, values, attn_mask=scores_bias[:, None], dropout_p=dropout_p, scale=1.0 / math.sqrt(q.shape[-1])
    )
    real = torch.ones_like(count, dtype=torch.bool) if mask is None else mask[:, 0]
    outputs = torch.where(real[:, None, None], outputs, 0)
    dtype = compute_dtype(q.dtype)
    new_state = (
        torch.where(real[:, None, None], keys, cached_keys.to(k.dtype)),
        torch.where(real[:, None, None], values, cached_values.to(v.dtype)),
        (count + real.long()).to(dtype),
    )
    return outputs, new_state


def chunked_attention(q, k, v, bias, state, mask=None, resets=None, dropout_p=0.0):
    """Causal softmax attention inside chunks of each sequence's own tokens.

    q, k `[B, T, Z]`, v `[B, T, E]`, bias `[C]` (added to the score of the key j tokens back, 0 <= j < C),
    state `(keys [B, C, Z], values [B, C, E], count [B])`: the current chunk's cached keys and values (slots
    0 .. count mod C - 1 are valid) and the real tokens of the row's current sequence so far; mask / resets
    `[B, T]` bool or None. The k-th real token of a sequence is in chunk floor(k / C) at slot k mod C and attends
    to the earlier tokens of that chunk; padding takes no slot and packed sequences each start a chunk. Returns
    `(outputs [B, T, E]` (0 at padding), the new state)` with the count in at least float32 (exact to 2^24 tokens).
    """
    batch, steps, zdim = q.shape
    chunk_size = bias.shape[0]
    cached_keys, cached_values, count = state
    count = count.round().long()
    if steps == 1:  # decoding (a reset on a row's first token is ignored: the token continues the state)
        return _one_token_attention(q, k, v, bias, (cached_keys, cached_values, count), mask, dropout_p)
    if mask is None and resets is None and bool((count % chunk_size == 0).all()):
        return _aligned_chunked_attention(q, k, v, bias, count, dropout_p)
    real = torch.ones(batch, steps, dtype=torch.bool, device=q.device) if mask is None else mask
    starts = torch.zeros_like(real) if resets is None else resets & real
    starts = torch.cat([torch.zeros_like(starts[:, :1]), starts[:, 1:]], dim=1)  # the first token continues the state
    count = torch.where((starts & (real.long().cumsum(1) == 1)).any(1), 0, count)  # a new sequence after padding
    index, position, chunks, last = _chunk_layout(real, starts, count, chunk_size)
    width = chunks * chunk_size

    def lay_out(x, cached):
        """x `[B, T, F]` in the `[B, N, C, F]` layout, the cached chunk in chunk 0."""
        x = torch.where(real[..., None], x, 0)
        spread = x.new_zeros(batch, width + 1, x.shape[-1]).scatter(1, index[..., None].expand_as(x), x)
        spread = spread[:, :width].view(batch, chunks, chunk_size, -1)
        return torch.cat([(spread[:, 0] + cached.to(x.dtype))[:, None], spread[:, 1:]], dim=1)

    slots = torch.arange(chunk_size, device=q.device)
    cached_valid = slots[None, :] < (count % chunk_size)[:, None]  # [B, C]
    cached_keys = torch.where(cached_valid[..., None], cached_keys, 0)
    cached_values = torch.where(cached_valid[..., None], cached_values, 0)
    queries = lay_out(q, torch.zeros_like(cached_keys))
    keys = lay_out(k, cached_keys)
    values = lay_out(v, cached_values)
    valid = torch.zeros(batch, width + 1, dtype=torch.bool, device=q.device).scatter(1, index, real)
    valid = valid[:, :width].view(batch, chunks, chunk_size)
    valid = torch.cat([(valid[:, 0] | cached_valid)[:, None], valid[:, 1:]], dim=1)

    diagonal = torch.eye(chunk_size, dtype=torch.bool, device=q.device)
    seen = valid[..., None, :] | diagonal  # [B, N, C, C]: keys holding a token; an empty slot sees only itself
    scores_bias = torch.where(seen, _relative_scores(bias, q.dtype), -torch.inf)
    outputs = F.scaled_dot_product_attention(
        queries.reshape(batch * chunks, chunk_size, zdim),
        keys.reshape(batch * chunks, chunk_size, zdim),
        values.reshape(batch * chunks, chunk_size, -1),
        attn_mask=scores_bias.reshape(batch * chunks, chunk_size, chunk_size),
        dropout_p=dropout_p,
        scale=1.0 / math.sqrt(zdim),
    ).view(batch, width, -1)
    outputs = torch.gather(outputs, 1, index.clamp(max=width - 1)[..., None].expand(batch, steps, outputs.shape[-1]))
    outputs = torch.where(real[..., None], outputs, 0)

    has_real = real.any(1)
    final_position = torch.where(real, position + 1, 0).gather(1, (real.long().cumsum(1).argmax(1))[:, None])[:, 0]
    new_count = torch.where(has_real, final_position, count)
    rows = torch.arange(batch, device=q.device)
    new_state = (keys[rows, last], values[rows, last], new_count.to(compute_dtype(q.dtype)))
    return outputs, new_state


class TCNCAMixer(nn.Module):
    """MEGA's gated attention block with a TCN: ``x [B, T, D] -> x' = RMSNorm(x)``,
    ``v = silu(W_v x' + b_v) [B, T, E]``, ``m = silu(TCN(x') + omega * x') [B, T, D]``,
    ``[u, zr, hx] = W_mx m + b_mx`` (widths D, Z + E, D), ``u = sigmoid(u)``, ``z, r = split(silu(zr))``,
    ``q = z * gamma_0 + beta_0``, ``k = z * gamma_1 + beta_1`` (`[B, T, Z]`), ``o = chunked_attention(q, k, v)``,
    ``h = silu(hx + W_h (o * r) + b_h)``, returns ``u * (h - x)`` (the block adds x: ``x + u * (h - x)``).

    The block it sits in hands it x itself (`TCNCAModel` removes the block's pre-norm): the mixer normalises
    x for its branches and keeps x for the gated residual. Parameters: `norm`, `v_proj`, `mx_proj`, `h_proj`
    (`nn.Linear`), `tcn_weight` `[D_tcn, D, K]`, `omega` `[D]`, `qk_weight`, `qk_bias` `[2, Z]`, `relative_bias`
    `[C]`. The cache holds the TCN's windows `[B, (K - 1) f^i, D]`, the current chunk's keys `[B, C, Z]` and values
    `[B, C, E]`, and the sequence's token count `[B, 1]`: its size does not grow with the tokens generated.
    """

    def __init__(self, config: TCNCAConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        width, zdim, hdim = config.hidden_size, config.zdim, config.value_width
        self.splits = (width, zdim + hdim, width)
        self.norm = RMSNorm(width, config.norm_eps)
        self.v_proj = nn.Linear(width, hdim)
        self.tcn_weight = nn.Parameter(torch.empty(config.tcn_depth, width, config.tcn_kernel_size))
        self.omega = nn.Parameter(torch.empty(width))
        self.mx_proj = nn.Linear(width, sum(self.splits))
        self.qk_weight = nn.Parameter(torch.empty(2, zdim))
        self.qk_bias = nn.Parameter(torch.empty(2, zdim))
        self.relative_bias = nn.Parameter(torch.empty(config.chunk_size))
        self.h_proj = nn.Linear(hdim, width)
        self.dropout = nn.Dropout(config.mixer_dropout)

    def init_mixer_weights(self) -> None:
        init.normal_(self.tcn_weight, std=1.0 / math.sqrt(self.config.tcn_kernel_size))
        init.normal_(self.omega, std=1.0)
        init.normal_(self.qk_weight, std=0.02)
        init.zeros_(self.qk_bias)
        init.normal_(self.relative_bias, std=0.02)

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Per-row shapes of the cached state: the TCN windows, chunk keys, chunk values, token count."""
        c = self.config
        windows = [
            shape[1:] for shape in state_shapes(1, c.hidden_size, c.tcn_kernel_size, c.tcn_dilation_factor, c.tcn_depth)
        ]
        return [*windows, (c.chunk_size, c.zdim), (c.chunk_size, c.value_width), (1,)]

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden `[B, T, D]` (the block's input, not normalised), attention_mask and resets `[B, T]` bool or
        None -> `[B, T, D]`."""
        c = self.config
        batch = hidden.shape[0]
        state = read_state(cache, self.layer_idx, self.state_shapes())
        dtype = compute_dtype(hidden.dtype)
        if state is None:
            state = tuple(
                torch.zeros(batch, *shape, dtype=dtype, device=hidden.device) for shape in self.state_shapes()
            )
        windows, attention_state = state[: c.tcn_depth], state[c.tcn_depth :]
        x = self.norm(hidden)
        tcn, windows = dilated_conv(
            x,
            self.tcn_weight,
            windows,
            attention_mask,
            c.tcn_dilation_factor,
            c.tcn_activation,
            resets=resets,
            backend=c.kernel_backend,
        )
        values = F.silu(self.v_proj(x))
        gated = self.dropout(F.silu(tcn + self.omega * x))
        update, zr, candidate = self.mx_proj(gated).split(self.splits, dim=-1)
        z, reset_gate = F.silu(zr).split((c.zdim, c.value_width), dim=-1)
        queries = z * self.qk_weight[0] + self.qk_bias[0]
        keys = z * self.qk_weight[1] + self.qk_bias[1]
        cached_keys, cached_values, count = attention_state
        attended, (cached_keys, cached_values, count) = chunked_attention(
            queries,
            keys,
            values,
            self.relative_bias,
            (cached_keys, cached_values, count[:, 0]),
            attention_mask,
            resets,
            c.attention_dropout if self.training else 0.0,
        )
        h = self.dropout(F.silu(candidate + self.h_proj(attended * reset_gate)))
        attention_state = (cached_keys.to(dtype), cached_values.to(dtype), count[:, None].to(dtype))
        write_state(cache, self.layer_idx, (*(w.to(dtype) for w in windows), *attention_state))
        return torch.sigmoid(update) * (h - hidden)


class TCNCAModel(SeqModel):
    """The backbone; each block is ``x + TCNCAMixer(x)`` (the mixer normalises itself) then the feed-forward."""

    config_class = TCNCAConfig
    mixer_class = TCNCAMixer

    def __init__(self, config: TCNCAConfig):
        super().__init__(config)
        for layer in self.layers:
            layer.mixer_norm = nn.Identity()


class TCNCAForCausalLM(SeqForCausalLM):
    config_class = TCNCAConfig
    backbone_class = TCNCAModel


class TCNCAForSequenceClassification(SeqForSequenceClassification):
    config_class = TCNCAConfig
    backbone_class = TCNCAModel
