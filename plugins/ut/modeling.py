"""Universal Transformer model classes: one shared attention + feed-forward layer applied in depth, a fixed number
of steps or per position with adaptive computation time (`docs/architectures/ut.md`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache, DynamicCache, EncoderDecoderCache, GenerationMixin
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    Seq2SeqLMOutput,
    SequenceClassifierOutputWithPast,
)

from hf_seqplugins import (
    CausalSelfAttention,
    SeqForCausalLM,
    SeqForSequenceClassification,
    SeqModel,
    SeqPreTrainedModel,
    compute_dtype,
)
from hf_seqplugins.core.attention import token_positions
from hf_seqplugins.core.cache import cached_batch_size
from hf_seqplugins.core.cola import SlotCache

from .configuration import UniversalTransformerConfig

MAX_TIMESCALE = 1e4


def timing_signal(positions: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """tensor2tensor's sinusoid at `positions` (any shape `[...]`) -> `[..., channels]`: the sines of all timescales,
    then their cosines (halves concatenated, not interleaved), zero-padded to an odd `channels`."""
    half = channels // 2
    increment = math.log(MAX_TIMESCALE) / max(half - 1, 1)
    inverse = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float64) * -increment)
    angles = positions[..., None].to(torch.float64) * inverse
    signal = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return nn.functional.pad(signal, (0, channels % 2)).to(dtype)


class PaddedAttention(nn.Module):
    """Multi-head attention of queries from `hidden` `[B, T, D]` over a `memory` `[B, S, D]` (the encoder's
    self-attention: `hidden` itself; cross-attention: the encoder output), keys masked by `memory_mask` `[B, S]`
    (True or 1 at real tokens; None: all real). No causal mask, no cache, no rotary embedding."""

    def __init__(self, config: UniversalTransformerConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_attention_heads, config.attention_head_dim
        width, inner, bias = config.hidden_size, self.num_heads * self.head_dim, config.attention_bias
        self.q_proj = nn.Linear(width, inner, bias=bias)
        self.k_proj = nn.Linear(width, inner, bias=bias)
        self.v_proj = nn.Linear(width, inner, bias=bias)
        self.o_proj = nn.Linear(inner, width, bias=bias)

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None):
        batch, steps, _ = hidden.shape

        def heads(x):
            return x.view(batch, x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(hidden)), heads(self.k_proj(memory)), heads(self.v_proj(memory))
        allowed = None
        if memory_mask is not None:
            real = memory_mask.bool()
            k, v = torch.where(real[:, None, :, None], k, 0), torch.where(real[:, None, :, None], v, 0)
            allowed = real[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.o_proj(out.transpose(1, 2).reshape(batch, steps, -1))


class UniversalTransformerLayer(GradientCheckpointingLayer):
    """The shared layer: self-attention (causal, with a KV cache slot per depth step, for decoders; over the whole
    input for the encoder), then for a seq2seq decoder cross-attention to the encoder output, then a ReLU
    feed-forward; each residual with LayerNorm before ("pre") or after ("post"). `[B, T, D] -> [B, T, D]`. No rotary
    embedding: positions come from the timing signal."""

    def __init__(self, config: UniversalTransformerConfig, causal: bool = True, cross_attention: bool = False):
        super().__init__()
        self.post_norm = config.norm_style == "post"
        self.causal = causal
        self.mixer_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.mixer = CausalSelfAttention(config, layer_idx=0, rotary=False) if causal else PaddedAttention(config)
        self.cross_norm = self.cross_attention = None
        if cross_attention:
            self.cross_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
            self.cross_attention = PaddedAttention(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.ReLU(),
            nn.Linear(config.intermediate_size, config.hidden_size),
        )
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        cache_slot: int = 0,
        history_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`cache_slot`: the cache layer of this depth step (the attention sees it through a `SlotCache` view, as
        CoLa's repeated layers do); `history_mask` `[B, T_past + T]` and `resets` `[B, T]`
        as `CausalSelfAttention` takes them (the encoder: `history_mask` is its padding mask `[B, T]`); `memory`
        `[B, S, D]` and `memory_mask` `[B, S]`: the encoder output a decoder's cross-attention reads."""
        step_cache = None if cache is None else SlotCache(cache, cache_slot)
        sublayers = []
        if self.causal:
            sublayers.append((self.mixer_norm, lambda x: self.mixer(x, step_cache, history_mask, resets)))
        else:
            sublayers.append((self.mixer_norm, lambda x: self.mixer(x, x, history_mask)))
        if self.cross_attention is not None:
            sublayers.append((self.cross_norm, lambda x: self.cross_attention(x, memory, memory_mask)))
        sublayers.append((self.ffn_norm, self.ffn))
        for norm, sublayer in sublayers:
            if self.post_norm:
                hidden = norm(hidden + self.dropout(sublayer(hidden)))
            else:
                hidden = hidden + self.dropout(sublayer(norm(hidden)))
        return hidden


@dataclass
class DepthResult:
    """What `DepthRecurrence.run` returns: `output` `[B, T, D]` (before the final norm), `ponder_times` and
    `remainders` `[B, T]`, `auxiliary_loss` (the ponder loss; None without ACT), `states` (the state entering each
    step, when asked for)."""

    output: torch.Tensor
    ponder_times: torch.Tensor
    remainders: torch.Tensor
    auxiliary_loss: torch.Tensor | None
    states: list[torch.Tensor] | None


class DepthRecurrence(nn.Module):
    """The timing signals, the halting unit and the ACT bookkeeping around a shared layer (`run`)."""

    def __init__(self, config: UniversalTransformerConfig):
        super().__init__()
        self.config = config
        width, self.depth = config.hidden_size, config.num_hidden_layers
        self.act = config.recurrence_type == "act"
        # The halting unit w . x + b as a product and a sum, not Linear(D, 1): a checkpoint's tensors load at
        # unaligned addresses, which sends a one-output matrix product down another BLAS path, and the loaded model's
        # outputs would differ from the saved one's in the last bit.
        self.halting_weight = nn.Parameter(torch.empty(width)) if self.act else None
        self.halting_bias = nn.Parameter(torch.empty(1)) if self.act else None
        self.step_table = None
        if config.add_step_timing_signal and config.step_timing_signal_type == "learned":
            self.step_table = nn.Parameter(torch.empty(self.depth, width))

    def init_mixer_weights(self) -> None:
        """The learned step signal N(0, 1/D) (scaled by sqrt(D) when added); the halting weights
        N(0, initializer_range^2), its bias `act_halting_bias_init`."""
        if self.step_table is not None:
            init.normal_(self.step_table, std=self.config.hidden_size**-0.5)
        if self.halting_bias is not None:
            init.normal_(self.halting_weight, std=self.config.initializer_range)
            init.constant_(self.halting_bias, self.config.act_halting_bias_init)

    def step_signal(self, step: int, like: torch.Tensor) -> torch.Tensor | float:
        """`[D]` signal of depth step `step` (0 when the config adds none)."""
        if not self.config.add_step_timing_signal:
            return 0.0
        if self.step_table is not None:
            return self.step_table[step].to(like.dtype) * math.sqrt(self.config.hidden_size)
        table = timing_signal(torch.arange(self.depth, device=like.device), like.shape[-1], like.dtype)
        return table[step]

    def position_signal(self, positions: torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
        """`[B, T, D]` signal of the token positions `[B, T]` (0 when the config adds none)."""
        if not self.config.add_position_timing_signal:
            return 0.0
        return timing_signal(positions, like.shape[-1], like.dtype)

    def halting_probability(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.act_type == "random":
            return torch.rand(x.shape[:2], device=x.device, dtype=compute_dtype(x.dtype))
        logit = (x * self.halting_weight.to(x.dtype)).sum(-1) + self.halting_bias.to(x.dtype)
        return torch.sigmoid(logit.to(compute_dtype(x.dtype)))

    def run(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        real: torch.Tensor,
        layer: Callable[[torch.Tensor, int], torch.Tensor],
        full_depth: bool,
        keep_states: bool = False,
    ) -> DepthResult:
        """Steps ``x = h + P_pos + P_step(t)``, ``h = layer(x, t)`` from ``h = sqrt(D) hidden`` (tensor2tensor scales
        the embeddings, initialised N(0, 1/D), to unit size next to the timing signals), the embedded inputs
        `hidden` `[B, T, D]` at token `positions` `[B, T]`; `real` `[B, T]` bool marks the tokens (padding starts
        halted, so it never keeps the loop running and runs no step). Under ACT the loop stops once every position
        has halted, unless `full_depth` (a cached call: every step's keys and values must exist for later tokens)."""
        config = self.config
        threshold = 1.0 - config.act_epsilon
        counts = {"dtype": compute_dtype(hidden.dtype), "device": hidden.device}  # float64 for a float64 model
        halting_sum = torch.where(real, 0.0, 1.0).to(**counts)
        remainders = torch.zeros(real.shape, **counts)
        updates = torch.zeros(real.shape, **counts)
        position_signal = self.position_signal(positions, hidden)
        output, state = torch.zeros_like(hidden), hidden * math.sqrt(config.hidden_size)
        states = [] if keep_states else None
        for step in range(self.depth):
            if self.act and not full_depth and not bool((halting_sum < threshold).any()):
                break
            if states is not None:
                states.append(state)
            x = state + position_signal + self.step_signal(step, hidden)
            transformed = layer(x, step)
            if self.act:
                weight = self._act_update(x, step, halting_sum, remainders, updates, threshold)
                weight = weight[..., None].to(hidden.dtype)
                kept = output if config.act_type == "accumulated" else output * (1 - weight)
                output = transformed * weight + kept
            else:
                output = transformed
            state = transformed
        if not self.act:
            return DepthResult(output, torch.full(real.shape, float(self.depth), **counts), remainders, None, states)
        return DepthResult(output, updates, remainders, self.ponder_loss(updates, remainders, real), states)

    def ponder_loss(self, ponder_times: torch.Tensor, remainders: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``act_loss_weight * mean(N + R)`` over the real tokens (`real` `[B, T]`, with act_loss_ignores_padding)
        or over every position."""
        ponder = ponder_times + remainders
        if self.config.act_loss_ignores_padding:
            ponder = ponder[real]
        return self.config.act_loss_weight * ponder.mean()

    def _act_update(self, x, step, halting_sum, remainders, updates, threshold) -> torch.Tensor:
        """One step of the ACT bookkeeping on `[B, T]` tensors, in place: the summed halting probability, the
        remainders R and the step counts N. Returns the weight `[B, T]` of this step's output."""
        probability = self.halting_probability(x)
        running = (halting_sum < 1.0).to(probability.dtype)
        reached = halting_sum + probability * running
        halts = (reached > threshold).to(probability.dtype) * running
        if self.config.act_force_halt_at_max and step == self.depth - 1:
            halts = running
        running = running - halts
        halting_sum += probability * running
        remainders += halts * (1 - halting_sum)
        halting_sum += halts * remainders
        updates += running + halts
        return probability * running + halts * remainders


def final_norm(config: UniversalTransformerConfig) -> nn.Module:
    """LayerNorm on the output of a pre-norm stack; nothing after a post-norm one (its layers end with one)."""
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps) if config.norm_style == "pre" else nn.Identity()


def _positions(history_mask, batch, length, cache, device, resets=None) -> torch.Tensor:
    """`[B, T]` positions of the current tokens: real tokens before each (after the cached ones), restarting at
    packed sequence starts."""
    past = 0 if cache is None else cache.get_seq_length(0)
    positions = token_positions(history_mask, batch, length, past, device)
    if resets is not None:
        positions = positions - torch.where(resets, positions, 0).cummax(1).values
    return positions


@dataclass
class UniversalTransformerOutput(BaseModelOutputWithPast):
    """`ponder_times` `[B, T]`: the steps N each position ran (ACT; the fixed depth otherwise); `remainders`
    `[B, T]`: R, the weight of each position's halting step; `auxiliary_loss`: the ponder loss
    ``act_loss_weight * mean(N + R)`` (None without ACT)."""

    ponder_times: torch.Tensor | None = None
    remainders: torch.Tensor | None = None
    auxiliary_loss: torch.Tensor | None = None


@dataclass
class UniversalTransformerCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` (its `loss` includes the ponder loss) with the backbone's ponder outputs."""

    ponder_times: torch.Tensor | None = None
    remainders: torch.Tensor | None = None
    auxiliary_loss: torch.Tensor | None = None


@dataclass
class UniversalTransformerSequenceClassifierOutput(SequenceClassifierOutputWithPast):
    """`SequenceClassifierOutputWithPast` (its `loss` includes the ponder loss) with the backbone's ponder outputs."""

    ponder_times: torch.Tensor | None = None
    remainders: torch.Tensor | None = None
    auxiliary_loss: torch.Tensor | None = None


class UniversalTransformerModel(SeqModel):
    """Embeddings, the shared layer applied in depth (`DepthRecurrence`), a final LayerNorm (pre-norm style).

    Each step adds the position and step timing signals to the state, ``x = h + P_pos + P_step(t)``, then
    ``h = layer(x)``. Under ACT a halting unit ``p = sigmoid(w . x + b)`` decides per position when its output
    freezes; halted positions keep being transformed, since later positions attend to them.

    Without a cache the loop stops once every position has halted (as tensor2tensor's). With one, every call runs
    all `num_hidden_layers` steps and keeps each step's keys and values: a later token may run more steps than
    earlier ones did and attends to their states at those steps. Halted positions' outputs are frozen, so the extra
    steps change no output: cached decoding computes what a forward over the whole sequence computes.
    """

    config_class = UniversalTransformerConfig
    _no_split_modules = ["UniversalTransformerLayer"]

    def __init__(self, config: UniversalTransformerConfig):
        SeqPreTrainedModel.__init__(self, config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layer = UniversalTransformerLayer(config)
        self.recurrence = DepthRecurrence(config)
        self.norm = final_norm(config)
        self.gradient_checkpointing = False
        self.uses_history_mask = True
        self.post_init()

    def init_mixer_weights(self) -> None:
        """Embeddings N(0, 1/D), as tensor2tensor's (`DepthRecurrence.run` scales them by sqrt(D))."""
        init.normal_(self.embed_tokens.weight, std=self.config.hidden_size**-0.5)

    def run_blocks(self, hidden, cache, mask, history_mask, resets, input_ids, output_hidden_states):
        """The recurrence in depth on the embedded inputs `[B, T, D]` (see the class docstring)."""
        batch, length, _ = hidden.shape
        positions = _positions(history_mask, batch, length, cache, hidden.device, resets)
        real = torch.ones(batch, length, dtype=torch.bool, device=hidden.device) if mask is None else mask.bool()
        result = self.recurrence.run(
            hidden,
            positions,
            real,
            lambda x, step: self.layer(x, cache, step, history_mask, resets),
            full_depth=cache is not None,
            keep_states=bool(output_hidden_states),
        )
        hidden = self.norm(result.output)
        return UniversalTransformerOutput(
            last_hidden_state=hidden,
            cache=cache,
            hidden_states=None if result.states is None else (*result.states, hidden),
            ponder_times=result.ponder_times,
            remainders=result.remainders,
            auxiliary_loss=result.auxiliary_loss,
        )


class UniversalTransformerForCausalLM(SeqForCausalLM):
    config_class = UniversalTransformerConfig
    backbone_class = UniversalTransformerModel
    output_class = UniversalTransformerCausalLMOutput
    _no_split_modules = ["UniversalTransformerLayer"]


class UniversalTransformerForSequenceClassification(SeqForSequenceClassification):
    config_class = UniversalTransformerConfig
    backbone_class = UniversalTransformerModel
    output_class = UniversalTransformerSequenceClassifierOutput
    _no_split_modules = ["UniversalTransformerLayer"]


@dataclass
class UniversalTransformerSeq2SeqLMOutput(Seq2SeqLMOutput):
    """`Seq2SeqLMOutput` (its `loss` includes both ponder losses) with the ponder outputs of the encoder
    (`encoder_ponder_times`, `encoder_remainders` `[B, S]`) and of the decoder (`ponder_times`, `remainders`
    `[B, T]`), and `auxiliary_loss`, the sum of their ponder losses."""

    ponder_times: torch.Tensor | None = None
    remainders: torch.Tensor | None = None
    encoder_ponder_times: torch.Tensor | None = None
    encoder_remainders: torch.Tensor | None = None
    auxiliary_loss: torch.Tensor | None = None


class UniversalTransformerEncoder(SeqPreTrainedModel):
    """The encoder of the sequence-to-sequence form: embeddings, a shared layer with self-attention over the whole
    input applied in depth, a final LayerNorm (pre-norm style). `input_ids` `[B, S]` -> `last_hidden_state`
    `[B, S, D]` with `ponder_times` and `remainders` (`UniversalTransformerOutput`; its `auxiliary_loss` stays None:
    `generate()` repeats every tensor of the encoder output along the batch, so the seq2seq model computes the
    encoder's ponder loss from those two with `recurrence.ponder_loss`). Padding (attention_mask 0) is never read."""

    config_class = UniversalTransformerConfig
    _no_split_modules = ["UniversalTransformerLayer"]

    def __init__(self, config: UniversalTransformerConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layer = UniversalTransformerLayer(config, causal=False)
        self.recurrence = DepthRecurrence(config)
        self.norm = final_norm(config)
        self.post_init()

    init_mixer_weights = UniversalTransformerModel.init_mixer_weights

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> UniversalTransformerOutput | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        embeds = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length, _ = embeds.shape
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, length):
            raise ValueError(f"attention_mask must be [{batch}, {length}], got shape {list(attention_mask.shape)}")
        mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
        real = torch.ones(batch, length, dtype=torch.bool, device=embeds.device) if mask is None else mask
        result = self.recurrence.run(
            embeds,
            _positions(mask, batch, length, None, embeds.device),
            real,
            lambda x, step: self.layer(x, history_mask=mask),
            full_depth=False,
            keep_states=bool(output_hidden_states),
        )
        hidden = self.norm(result.output)
        output = UniversalTransformerOutput(
            last_hidden_state=hidden,
            hidden_states=None if result.states is None else (*result.states, hidden),
            ponder_times=result.ponder_times,
            remainders=result.remainders,
        )
        return output if return_dict is not False else output.to_tuple()


class UniversalTransformerForSeq2SeqLM(SeqPreTrainedModel, GenerationMixin):
    """The encoder-decoder Universal Transformer (the paper's translation form): the encoder
    (`UniversalTransformerEncoder`), then a decoder whose shared layer holds causal self-attention, cross-attention
    to the encoder output and the feed-forward, applied in depth with its own timing signals and halting unit; the
    embeddings are shared by encoder, decoder and the output head.

    Decoding caches the decoder's keys and values per depth step (the self-attention part of the
    `EncoderDecoderCache` that `generate()` builds, or a `DynamicCache`); cross-attention reads the encoder output
    at every step. With `labels` `[B, T]` (-100 ignored) and no `decoder_input_ids`, the decoder reads the labels
    shifted right after `decoder_start_token_id`; the loss is the cross-entropy plus the encoder's and the
    decoder's ponder losses."""

    config_class = UniversalTransformerConfig
    base_model_prefix = "encoder"
    _no_split_modules = ["UniversalTransformerLayer"]
    _tied_weights_keys = {"lm_head.weight": "encoder.embed_tokens.weight"}

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return True

    def __init__(self, config: UniversalTransformerConfig):
        config = copy.deepcopy(config)  # the same config may build a causal LM too, which is no encoder-decoder
        config.is_encoder_decoder = True
        if config.decoder_start_token_id is None:
            config.decoder_start_token_id = config.pad_token_id if config.pad_token_id is not None else 0
        super().__init__(config)
        self.encoder = UniversalTransformerEncoder(config)
        self.decoder_layer = UniversalTransformerLayer(config, causal=True, cross_attention=True)
        self.decoder_recurrence = DepthRecurrence(config)
        self.decoder_norm = final_norm(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_encoder(self):
        return self.encoder

    def get_input_embeddings(self):
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value):
        self.encoder.embed_tokens = value

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """`[B, T]` labels -> decoder inputs: `decoder_start_token_id`, then the labels but the last (-100 read as
        the padding token)."""
        start, pad = self.config.decoder_start_token_id, self.config.pad_token_id
        shifted = torch.cat([labels.new_full((labels.shape[0], 1), start), labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == -100, start if pad is None else pad)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> UniversalTransformerSeq2SeqLMOutput | tuple:
        """input_ids `[B, S]` with attention_mask `[B, S]` (or `encoder_outputs`), decoder_input_ids `[B, T]`
        (decoder_attention_mask `[B, T_past + T]`, 0 at padding) -> logits `[B, T, vocab]`."""
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids, attention_mask, inputs_embeds, output_hidden_states=output_hidden_states
            )
        elif not isinstance(encoder_outputs, UniversalTransformerOutput):
            encoder_outputs = UniversalTransformerOutput(last_hidden_state=encoder_outputs[0])
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.shift_right(labels)
        if (decoder_input_ids is None) == (decoder_inputs_embeds is None):
            raise ValueError("pass exactly one of decoder_input_ids and decoder_inputs_embeds (or labels)")
        embeds = (
            self.encoder.embed_tokens(decoder_input_ids) if decoder_inputs_embeds is None else decoder_inputs_embeds
        )
        batch, length, _ = embeds.shape

        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        cached = cached_batch_size(self_cache)
        if cached is not None and cached != batch:
            raise ValueError(f"the cache holds states of batch size {cached}, the input has batch size {batch}")
        history_mask = None
        if decoder_attention_mask is not None and not bool(decoder_attention_mask.all()):
            history_mask = decoder_attention_mask.bool()
        real = torch.ones(batch, length, dtype=torch.bool, device=embeds.device)
        if history_mask is not None:
            real = history_mask[:, -length:]
        memory, memory_mask = encoder_outputs.last_hidden_state, attention_mask
        result = self.decoder_recurrence.run(
            embeds,
            _positions(history_mask, batch, length, self_cache, embeds.device),
            real,
            lambda x, step: self.decoder_layer(x, self_cache, step, history_mask, None, memory, memory_mask),
            full_depth=self_cache is not None,
            keep_states=bool(output_hidden_states),
        )
        hidden = self.decoder_norm(result.output)
        logits = self.lm_head(hidden)

        auxiliary_loss = None
        if self.decoder_recurrence.act:
            source_real = torch.ones_like(encoder_outputs.ponder_times, dtype=torch.bool)
            if attention_mask is not None:
                source_real = attention_mask.bool()
            encoder_ponder = self.encoder.recurrence.ponder_loss(
                encoder_outputs.ponder_times, encoder_outputs.remainders, source_real
            )
            auxiliary_loss = encoder_ponder + result.auxiliary_loss
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
            if auxiliary_loss is not None:
                loss = loss + auxiliary_loss
        output = UniversalTransformerSeq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=cache,
            decoder_hidden_states=None if result.states is None else (*result.states, hidden),
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            ponder_times=result.ponder_times,
            remainders=result.remainders,
            encoder_ponder_times=encoder_outputs.ponder_times,
            encoder_remainders=encoder_outputs.remainders,
            auxiliary_loss=auxiliary_loss,
        )
        return output if return_dict is not False else output.to_tuple()
