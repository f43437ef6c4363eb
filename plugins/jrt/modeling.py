"""JRT-RNN model classes: prefix linear attention, sliding-window attention and gated short convolutions
(`docs/architectures/jrt.md`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from hf_seqplugins import (
    SeqForCausalLM,
    SeqForSequenceClassification,
    SeqModel,
    SlidingWindowAttention,
    compute_dtype,
    read_state,
    run_by_segments,
    write_state,
)
from hf_seqplugins.kernels.feature_linear_attention import (
    feature_linear_attention,
    taylor_feature_dim,
    taylor_features,
)

from .configuration import JRTConfig


def _real(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`[B, T]` bool, True at real tokens."""
    return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device) if mask is None else mask


def _run(function, sequences, state, mask, resets):
    """``function(*sequences, initial_state=state, mask=mask)``, one packed sequence per row when `resets` is given."""
    if resets is None:
        return function(*sequences, initial_state=state, mask=mask)
    return run_by_segments(function, sequences, resets, mask, state)


class PrefixLinearAttention(nn.Module):
    """PLA: ``hidden [B, T, D]`` -> Taylor features of the decoder queries and keys `[B, T, H, F]` (F = 1 + f + f^2)
    and values `[B, T, H, E]`, and of the encoder keys and values (separate projections) over the encoder
    region, the first M real tokens. The encoder enters as an initial state
    ``S_enc = sum_{j<M} phi(k^e_j) v^e_j^T``, ``z_enc = sum_{j<M} phi(k^e_j)`` seen by every position (the prefix
    included); the causal part is `feature_linear_attention` from it. ``out_proj`` `[H*E -> D]`.

    Parameters: `q_proj`, `k_proj`, `k_enc_proj` `[D -> H*f]`, `v_proj`, `v_enc_proj` `[D -> H*E]`, `out_proj`.
    The cache holds `(S [B, H, F, E], z [B, H, F], seen [B, 1])`, `seen` the real tokens read so far. A call
    continuing a state with 0 < seen < M real tokens raises: the encoder region is read non-causally, so its
    tokens must all be in the prefill.
    """

    def __init__(self, config: JRTConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim, self.feature_dim = config.num_heads, config.head_width, config.feature_dim
        keys, values = self.num_heads * self.feature_dim, self.num_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, keys, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, keys, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, values, bias=False)
        self.k_enc_proj = nn.Linear(config.hidden_size, keys, bias=False)
        self.v_enc_proj = nn.Linear(config.hidden_size, values, bias=False)
        self.out_proj = nn.Linear(values, config.hidden_size, bias=False)

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Per-row shapes of the cached state `(S, z, seen)`."""
        features = taylor_feature_dim(self.feature_dim)
        return [(self.num_heads, features, self.head_dim), (self.num_heads, features), (1,)]

    def _heads(self, projection: nn.Linear, hidden: torch.Tensor, size: int) -> torch.Tensor:
        """`[B, T, H, size]` in the compute dtype (the feature map squares: no half precision there)."""
        return projection(hidden).view(*hidden.shape[:2], self.num_heads, size).to(compute_dtype(hidden.dtype))

    def attend(self, q, k, v, k_enc, v_enc, initial_state=None, mask=None):
        """Decoder features q, k `[B, T, H, F]`, values v `[B, T, H, E]`, encoder features and values alike, state
        `(S, z, seen)` or None -> `(y [B, T, H, E], (S, z, seen))`."""
        batch, steps = q.shape[:2]
        real = _real(q, mask)
        dtype = compute_dtype(v.dtype)
        if initial_state is None:
            s_0, z_0, seen = (torch.zeros(batch, *shape, dtype=dtype, device=q.device) for shape in self.state_shapes())
        else:
            s_0, z_0, seen = initial_state
        seen = seen[:, 0]
        enc_length = self.config.enc_length
        short = (seen > 0) & (seen < enc_length) & real.any(1)
        if bool(short.any()):
            raise ValueError(
                f"JRT: this call continues a prefill of only {int(seen[short].min())} real tokens, but the encoder "
                f"region is the first enc_length = {enc_length} real tokens and is read non-causally, so the "
                f"prefill must hold all of them: make every prompt at least {enc_length} real tokens long (e.g. "
                "left-pad it to enc_length with filler tokens that the attention mask keeps), or run the whole "
                "sequence without a cache"
            )
        position = seen[:, None] + real.cumsum(1) - 1  # [B, T] index among the row's real tokens
        encoder = (real & (position < enc_length))[..., None, None]
        k_enc = torch.where(encoder, k_enc.to(dtype), 0)
        v_enc = torch.where(encoder, v_enc.to(dtype), 0)
        state = (s_0 + torch.einsum("bthf,bthe->bhfe", k_enc, v_enc), z_0 + k_enc.sum(1))
        y, (s, z) = feature_linear_attention(
            q,
            k,
            v,
            state,
            mask,
            self.config.eps,
            chunk_size=self.config.chunk_size,
            backend=self.config.kernel_backend,
        )
        return y, (s, z, (seen + real.sum(1))[:, None].to(dtype))

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden `[B, T, D]`, attention_mask and resets `[B, T]` bool or None -> `[B, T, D]`."""
        batch, steps, _ = hidden.shape
        f, e = self.feature_dim, self.head_dim
        sequences = (
            taylor_features(self._heads(self.q_proj, hidden, f)),
            taylor_features(self._heads(self.k_proj, hidden, f)),
            self._heads(self.v_proj, hidden, e),
            taylor_features(self._heads(self.k_enc_proj, hidden, f)),
            self._heads(self.v_enc_proj, hidden, e),
        )
        state = read_state(cache, self.layer_idx, self.state_shapes())
        y, state = _run(self.attend, sequences, state, attention_mask, resets)
        write_state(cache, self.layer_idx, state)
        return self.out_proj(y.to(hidden.dtype).reshape(batch, steps, -1))


class BaseConv(nn.Module):
    """Gated short convolution: ``out_proj(conv(in_proj(x)) * gate_proj(x))``, `conv` a causal depthwise
    convolution of kernel K over the inner width C = conv_expand * D (with bias).

    The convolution reads the last K real inputs (padding is skipped, not read as zeros), so a padded step holds
    the state. The cache holds the last K - 1 real inner inputs `[B, K - 1, C]` (zeros before the first)."""

    def __init__(self, config: JRTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.kernel = config.conv_kernel_size
        inner = config.conv_expand * config.hidden_size
        self.in_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.gate_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(inner, self.kernel))
        self.conv_bias = nn.Parameter(torch.zeros(inner))
        self.out_proj = nn.Linear(inner, config.hidden_size, bias=False)

    def init_mixer_weights(self) -> None:
        init.uniform_(self.conv_weight, -1 / math.sqrt(self.kernel), 1 / math.sqrt(self.kernel))
        init.zeros_(self.conv_bias)

    def convolve(self, x, initial_state=None, mask=None):
        """x `[B, T, C]`, state `(history [B, K - 1, C],)` or None -> `(conv(x) [B, T, C], (history,))`.

        The earlier inputs and the real current ones are gathered into one compact sequence per row (real entries
        first, in order), convolved there, and each real token's output is read back at its rank. Runs in x's
        dtype (the mixer passes the compute dtype)."""
        batch, steps, inner = x.shape
        before = self.kernel - 1
        history = x.new_zeros(batch, before, inner) if initial_state is None else initial_state[0].to(x.dtype)
        real = torch.cat([torch.ones(batch, before, dtype=torch.bool, device=x.device), _real(x, mask)], dim=1)
        entries = torch.cat([history, torch.where(real[:, before:, None], x, 0)], dim=1)  # [B, K - 1 + T, C]
        index = torch.arange(before + steps, device=x.device)
        order = torch.where(real, index, index + before + steps).argsort(dim=1)
        compact = entries.gather(1, order[..., None].expand_as(entries))
        weight, bias = self.conv_weight.to(x.dtype), self.conv_bias.to(x.dtype)
        out = bias + sum(
            weight[:, before - j] * F.pad(compact, (0, 0, j, 0))[:, : before + steps] for j in range(self.kernel)
        )
        rank = real.long().cumsum(1) - 1  # position of each entry in the compact sequence
        y = out.gather(1, rank[:, before:, None].expand(batch, steps, inner))
        count = real.sum(1)  # the compact sequence's real length, >= K - 1
        last = (count[:, None] - before + torch.arange(before, device=x.device)).clamp_min(0)
        return y, (compact.gather(1, last[..., None].expand(batch, before, inner)),)

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden `[B, T, D]`, attention_mask and resets `[B, T]` bool or None -> `[B, T, D]`."""
        state = read_state(cache, self.layer_idx)
        inputs = self.in_proj(hidden).to(compute_dtype(hidden.dtype))
        y, state = _run(self.convolve, (inputs,), state, attention_mask, resets)
        write_state(cache, self.layer_idx, state)
        return self.out_proj(y.to(hidden.dtype) * self.gate_proj(hidden))


def jrt_mixer(config: JRTConfig, layer_idx: int) -> nn.Module:
    """PLA at `config.pla_layers`, sliding-window attention at `config.swa_layers`, BaseConv elsewhere."""
    kind = config.block_kind(layer_idx)
    if kind == "pla":
        return PrefixLinearAttention(config, layer_idx)
    return SlidingWindowAttention(config, layer_idx) if kind == "swa" else BaseConv(config, layer_idx)


class JRTModel(SeqModel):
    config_class = JRTConfig
    mixer_class = staticmethod(jrt_mixer)


class JRTForCausalLM(SeqForCausalLM):
    """The language model. With `labels` `[B, T]` (next-token labels, shifted inside, -100 ignored) the loss is
    transformers' causal LM loss; with `mlm_targets` `[B, T]` too (same-position labels of masked prefix tokens,
    -100 elsewhere; `JRTDataCollator` builds both) it is the JRT objective
    ``loss = CE_next_token(labels) + mlm_weight * CE_masked(mlm_targets)``, the masked-LM term averaged over its
    labelled positions. Under gradient accumulation `Trainer` passes `num_items_in_batch` (the next-token labels of
    all micro-batches) and sums the micro-batches' losses: the masked-LM term is then weighted by this
    micro-batch's share of those labels, so the sum stays one objective rather than growing with the number of
    micro-batches. (The argument is not named `*labels*`: `Trainer` takes every such forward argument for a label
    it must find in each batch before it computes an evaluation loss.)"""

    config_class = JRTConfig
    backbone_class = JRTModel

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mlm_targets: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """`SeqForCausalLM.forward`, plus the masked-LM term when `mlm_targets` `[B, T]` is given."""
        if mlm_targets is not None and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            raise ValueError("JRT: mlm_targets need the logits of every position; leave logits_to_keep at 0")
        output = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if mlm_targets is not None:
            logits = output.logits
            if tuple(mlm_targets.shape) != tuple(logits.shape[:2]):
                raise ValueError(
                    f"JRT: mlm_targets must be [B, T] = {list(logits.shape[:2])}, got {list(mlm_targets.shape)}"
                )
            mlm_targets = mlm_targets.to(logits.device)
            total = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                mlm_targets.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            mlm = self.config.mlm_weight * total / (mlm_targets != -100).sum().clamp_min(1)
            items = kwargs.get("num_items_in_batch")
            if items is not None and labels is not None:
                mlm = mlm * (labels[:, 1:] != -100).sum().to(mlm.device) / torch.as_tensor(items, device=mlm.device)
            output.loss = mlm if output.loss is None else output.loss + mlm
        return output if return_dict is not False else output.to_tuple()


class JRTForSequenceClassification(SeqForSequenceClassification):
    config_class = JRTConfig
    backbone_class = JRTModel
