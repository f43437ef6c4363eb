"""Shared modeling base: a plugin defines its config and its sequence-mixing layer, nothing else.

A backbone is embeddings -> `num_hidden_layers` pre-norm residual blocks -> RMSNorm. Each block is
``x + mixer(norm(x))`` then, when `config.intermediate_size > 0`, ``x + ffn(norm(x))`` with a gated
SiLU feed-forward. The mixer is the plugin's class, built as ``mixer_class(config, layer_idx)`` and
called as ``mixer(hidden [B, T, D], cache=..., attention_mask=[B, T] | None) -> [B, T, D]``; it
reads and writes its recurrent state with `hf_seqplugins.core.cache.read_state` / `write_state`. A mixer
with ``needs_history_mask = True`` (e.g. `hf_seqplugins.core.attention.CausalSelfAttention`) gets the padding
mask of the whole history `[B, T_past + T]` instead; one with ``needs_input_ids = True`` also gets
``input_ids=[B, T] | None``. The blocks listed in `config.ngram_layers` get an n-gram head
(`hf_seqplugins.core.ngram.NGramHead`) instead of the plugin's mixer.

A plugin declares its classes by subclassing, e.g.::

    class MyModel(SeqModel):
        config_class = MyConfig
        mixer_class = MyMixer

    class MyForCausalLM(SeqForCausalLM):
        config_class = MyConfig
        backbone_class = MyModel
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Cache, DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.utils import ModelOutput

from .cache import cached_batch_size
from .cola import apply_recorded_chain, chain_recorded
from .configuration import SeqConfig
from .ngram import NGramHead
from .sequences import boundaries, compute_dtype

# What the backbone reads from a head's keyword arguments to find packed sequences' boundaries.
BOUNDARY_KWARGS = ("position_ids", "seq_idx", "cu_seq_lens_q")
# Called as hook(model, save_directory) after every save_pretrained of a SeqPreTrainedModel on the main process.
# Empty in exported remote code, where transformers copies the code files itself.
SAVE_HOOKS: list[Callable[[PreTrainedModel, str | os.PathLike], None]] = []


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in at least float32 (`compute_dtype`)."""

    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(compute_dtype(x.dtype))
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class GatedFeedForward(nn.Module):
    """SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class SeqBlock(GradientCheckpointingLayer):
    """Pre-norm residual block around the plugin's mixer and an optional feed-forward."""

    def __init__(self, config: SeqConfig, layer_idx: int, mixer_class: type[nn.Module]):
        super().__init__()
        self.mixer_norm = RMSNorm(config.hidden_size, config.norm_eps)
        order = config.ngram_order(layer_idx)
        self.mixer = mixer_class(config, layer_idx) if order is None else NGramHead(config, layer_idx, order)
        self.ffn = None
        if config.intermediate_size > 0:
            self.ffn_norm = RMSNorm(config.hidden_size, config.norm_eps)
            self.ffn = GatedFeedForward(config.hidden_size, config.intermediate_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.mixer_takes_resets = "resets" in inspect.signature(self.mixer.forward).parameters

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
    ):
        """`attention_mask` `[B, T]`: padding of the current tokens; `history_mask` `[B, T_past + T]`: of all tokens,
        for mixers that set `needs_history_mask` (attention); `resets` `[B, T]`: packed sequence starts. Each is
        None when there is nothing to mark. `input_ids` `[B, T]` reach the mixers that set `needs_input_ids`."""
        mask = history_mask if getattr(self.mixer, "needs_history_mask", False) else attention_mask
        extra = {"input_ids": input_ids} if getattr(self.mixer, "needs_input_ids", False) else {}
        if resets is not None:
            if not self.mixer_takes_resets:
                raise ValueError(
                    f"{type(self.mixer).__name__}.forward takes no `resets`, so it cannot run packed sequences "
                    "(position_ids restarting at 0, seq_idx or cu_seq_lens_q): add a `resets` argument (see "
                    "hf_seqplugins.core.sequences) or pass the sequences as a padded batch"
                )
            extra["resets"] = resets
        hidden = hidden + self.dropout(self.mixer(self.mixer_norm(hidden), cache=cache, attention_mask=mask, **extra))
        if self.ffn is not None:
            hidden = hidden + self.dropout(self.ffn(self.ffn_norm(hidden)))
        return hidden


class SeqPreTrainedModel(PreTrainedModel):
    """Common `PreTrainedModel` settings for recurrent models (stateful, checkpointable)."""

    config_class = SeqConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SeqBlock"]
    _is_stateful = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, then every function in `SAVE_HOOKS` (publishing registers the
        writer of the self-contained remote code there, so every saved folder, and `push_to_hub`, loads with
        `trust_remote_code=True` without this package). A model run along a CoLa chain (`with_chain`) saves its
        stock layers and the chain, which `from_pretrained` puts back in place."""
        with chain_recorded(self):
            super().save_pretrained(save_directory, *args, **kwargs)
            if kwargs.get("is_main_process", True):
                for hook in SAVE_HOOKS:
                    hook(self, save_directory)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the CoLa chain the checkpoint records, if any."""
        return apply_recorded_chain(super().from_pretrained(*args, **kwargs))

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if hasattr(module, "init_mixer_weights"):
            module.init_mixer_weights()

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        # For custom code, transformers skips every module without parameters of its own (a mixer, a feed-forward
        # wrapper), so their `_init_weights` / `init_mixer_weights` would never run. Ours use the
        # `transformers.initialization` functions, which leave loaded weights alone: always initialise.
        super()._initialize_weights(module, is_custom_code=False)


class SeqModel(SeqPreTrainedModel):
    """Backbone: embeddings, blocks, final norm. Subclasses set `config_class` and `mixer_class`."""

    mixer_class: type[nn.Module]

    def __init__(self, config: SeqConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(SeqBlock(config, i, self.mixer_class) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.gradient_checkpointing = False
        self.uses_history_mask = any(getattr(layer.mixer, "needs_history_mask", False) for layer in self.layers)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """input_ids `[B, T]` (or inputs_embeds `[B, T, D]`), attention_mask `[B, T_total]` with 0 at padding.

        Padding positions leave every recurrent state untouched, so a left-padded row gives the same
        outputs at its real positions as the row alone. Packed rows (`DataCollatorWithFlattening`: position_ids
        restarting at 0, or `seq_idx` / `cu_seq_lens_q` in `kwargs`) give every sequence the outputs it gives
        alone. `cache` carries the recurrent state between calls.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, sequence], got shape {tuple(input_ids.shape)}")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        batch, length = inputs_embeds.shape[:2]
        if length == 0:
            raise ValueError(f"the input has no tokens (shape {list(inputs_embeds.shape[:2])}); pass at least one")
        cached = cached_batch_size(cache)
        if cached is not None and cached != batch:
            raise ValueError(f"the cache holds states of batch size {cached}, the input has batch size {batch}")
        mask, resets = boundaries(
            length,
            attention_mask,
            position_ids,
            kwargs.get("seq_idx"),
            kwargs.get("cu_seq_lens_q"),
            batch=batch,
            history=cached is not None,
        )
        history_mask = None
        if self.uses_history_mask and attention_mask is not None and not bool(attention_mask.all()):
            history_mask = attention_mask.bool()
        output = self.run_blocks(inputs_embeds, cache, mask, history_mask, resets, input_ids, output_hidden_states)
        return output if return_dict is not False else output.to_tuple()

    def run_blocks(
        self,
        hidden: torch.Tensor,
        cache: Cache | None,
        mask: torch.Tensor | None,
        history_mask: torch.Tensor | None,
        resets: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        output_hidden_states: bool,
    ) -> BaseModelOutputWithPast:
        """The blocks and the final norm on the embedded inputs `[B, T, D]` (the arguments as `SeqBlock.forward`
        takes them). A backbone with another depth structure overrides this."""
        all_hidden = [] if output_hidden_states else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden)
            hidden = layer(
                hidden, cache=cache, attention_mask=mask, history_mask=history_mask, resets=resets, input_ids=input_ids
            )
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden.append(hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden, cache=cache, hidden_states=tuple(all_hidden) if all_hidden is not None else None
        )


def head_output(output_class: type[ModelOutput], backbone_output: ModelOutput, loss, **fields) -> ModelOutput:
    """A head's `output_class` from its own `fields`, the backbone's `auxiliary_loss` (when it has one) added to
    `loss`, and every other field of `output_class` the backbone output carries (e.g. ponder times)."""
    auxiliary = backbone_output.get("auxiliary_loss")
    if loss is not None and auxiliary is not None:
        loss = loss + auxiliary
    carried = {
        name: backbone_output[name]
        for name in output_class.__dataclass_fields__
        if name not in fields and name != "loss" and name in backbone_output
    }
    return output_class(loss=loss, **fields, **carried)


class SeqForCausalLM(SeqPreTrainedModel, GenerationMixin):
    """Language model head on a backbone. Subclasses set `config_class` and `backbone_class`, and may set an
    `output_class` with more fields, which are filled from the backbone output (`head_output`).

    A config with `output_logit_soft_cap` > 0 gets ``logits = cap * tanh(logits / cap)`` (loss included).
    """

    backbone_class: type[SeqModel]
    output_class: type[ModelOutput] = CausalLMOutputWithPast
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() gives no DynamicCache to class names containing e.g. "xlstm" or "rwkv" (transformers' own
        # models of those names have custom caches); every model here keeps its state in a DynamicCache.
        return True

    def __init__(self, config: SeqConfig):
        super().__init__(config)
        self.model = self.backbone_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

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
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits `[B, T, vocab]`; with `labels` `[B, T]` (shifted inside, -100 ignored) also the loss. `kwargs` may
        hold `position_ids`, `seq_idx`, `cu_seq_lens_q` (packed sequences, see `SeqModel.forward`)."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            **{key: kwargs[key] for key in BOUNDARY_KWARGS if key in kwargs},
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        cap = getattr(self.config, "output_logit_soft_cap", None)
        if cap:
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        output = head_output(
            self.output_class, outputs, loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )
        return output if return_dict is not False else output.to_tuple()


def last_real_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """hidden `[B, T, D]` -> `[B, D]` at each row's last position whose attention_mask is 1 (the last one without)."""
    batch, length = hidden.shape[:2]
    if attention_mask is None:
        last = torch.full((batch,), length - 1, device=hidden.device)
    else:
        positions = torch.arange(length, device=hidden.device)
        last = torch.where(attention_mask[:, -length:].bool(), positions, -1).amax(dim=1).clamp_min(0)
    return hidden[torch.arange(batch, device=hidden.device), last]


class SeqForSequenceClassification(SeqPreTrainedModel):
    """Classifier on the last real (non-padding) position. Subclasses set `config_class` and `backbone_class`."""

    backbone_class: type[SeqModel]
    output_class: type[ModelOutput] = SequenceClassifierOutputWithPast

    def __init__(self, config: SeqConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = self.backbone_class(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast | tuple:
        """Logits `[B, num_labels]` read at each row's last position whose attention_mask is 1."""
        if attention_mask is None and input_ids is not None and self.config.pad_token_id is not None:
            attention_mask = (input_ids != self.config.pad_token_id).long()
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=output_hidden_states,
        )
        logits = self.score(last_real_hidden(outputs.last_hidden_state, attention_mask))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=logits, config=self.config)
        output = head_output(self.output_class, outputs, loss, logits=logits, hidden_states=outputs.hidden_states)
        return output if return_dict is not False else output.to_tuple()


@dataclass
class TimeSeriesPredictionOutput(ModelOutput):
    """`prediction_outputs` `[B, prediction_length, num_input_channels]`; `loss`: their mean squared error against
    `future_values` when given."""

    loss: torch.FloatTensor | None = None
    prediction_outputs: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class SeqForTimeSeriesPrediction(SeqPreTrainedModel):
    """Forecasting from real-valued series: `past_values` `[B, T, C]` (C = `config.num_input_channels`) projected to
    the model width (`value_projection`), the backbone, and a linear head from the last observed position to the
    next `config.prediction_length` steps of every channel. Subclasses set `config_class` and `backbone_class`.

    `past_observed_mask` `[B, T]` (or `[B, T, C]`, reduced to "any channel observed") marks real steps, 0 at
    padding; left padding leaves the forecast unchanged, as for text."""

    backbone_class: type[SeqModel]
    main_input_name = "past_values"

    def __init__(self, config: SeqConfig):
        super().__init__(config)
        self.model = self.backbone_class(config)
        self.value_projection = nn.Linear(config.num_input_channels, config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.prediction_length * config.num_input_channels)
        self.post_init()

    def forward(
        self,
        past_values: torch.Tensor,
        past_observed_mask: torch.Tensor | None = None,
        future_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TimeSeriesPredictionOutput | tuple:
        channels, horizon = self.config.num_input_channels, self.config.prediction_length
        if past_values.dim() != 3 or past_values.shape[-1] != channels:
            raise ValueError(
                f"past_values must be [batch, time, {channels}] (num_input_channels), "
                f"got shape {list(past_values.shape)}"
            )
        mask = past_observed_mask
        if mask is not None and mask.dim() == 3:
            mask = mask.bool().any(-1)
        embeds = self.value_projection(past_values.to(self.value_projection.weight.dtype))
        outputs = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        prediction = self.head(last_real_hidden(outputs.last_hidden_state, mask)).view(-1, horizon, channels)
        loss = None
        if future_values is not None:
            if tuple(future_values.shape[1:]) != (horizon, channels):
                raise ValueError(
                    f"future_values must be [batch, {horizon}, {channels}] (prediction_length, "
                    f"num_input_channels), got shape {list(future_values.shape)}"
                )
            loss = nn.functional.mse_loss(prediction, future_values.to(prediction.dtype))
        output = TimeSeriesPredictionOutput(
            loss=loss, prediction_outputs=prediction, hidden_states=outputs.hidden_states
        )
        return output if return_dict is not False else output.to_tuple()
