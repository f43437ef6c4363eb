"""Config of the Universal Transformer language model (`docs/architectures/ut.md`)."""

from __future__ import annotations

import numbers

from hf_seqplugins import SeqConfig, require_choice, require_positive_int

RECURRENCE_TYPES = ("basic", "act")
ACT_TYPES = ("basic", "accumulated", "random")
STEP_SIGNALS = ("learned", "sinusoid")
NORM_STYLES = ("pre", "post")


class UniversalTransformerConfig(SeqConfig):
    """One shared layer (causal self-attention, then a ReLU feed-forward) applied in depth: a fixed number of
    steps (`recurrence_type="basic"`) or, per position, until adaptive computation time (ACT) halts it. Every step
    first adds the position and step timing signals to the state.

    `num_hidden_layers` is the depth: the steps of the "basic" recurrence, or the most steps a position runs under
    ACT (tensor2tensor's `act_max_steps`, by default there twice its `num_hidden_layers`). The weights are those of
    one layer whatever the depth; the cache holds one KV slot per step.

    Args:
        num_attention_heads: heads of the shared layer's attention.
        head_dim: query, key and value size per head (None: hidden_size / num_attention_heads).
        recurrence_type: "basic" (fixed depth) or "act" (adaptive computation time per position).
        act_type: how a step's output enters a position's ACT output: "basic" interpolates
            ``prev = w s + (1 - w) prev``, "accumulated" sums ``prev = w s + prev``, "random" is "basic" with
            halting probabilities drawn uniformly (an ablation; not deterministic).
        act_epsilon: a position halts once its summed halting probability passes 1 - act_epsilon.
        act_halting_bias_init: initial bias of the halting unit (sigmoid(1) = 0.73: about two steps at init).
        act_loss_weight: weight of the ponder loss ``mean(N + R)`` added to the training loss.
        act_force_halt_at_max: give positions still running at act_max_steps their remainder (their weights then
            sum to 1); off reproduces tensor2tensor, where they stop with weights summing to less than 1 (the last
            step is step num_hidden_layers).
        act_loss_ignores_padding: average the ponder loss over real tokens only (tensor2tensor averages over all).
        add_position_timing_signal: add the sinusoid of each token's position at every step.
        add_step_timing_signal: add the signal of the step index at every step.
        step_timing_signal_type: "learned" (a table, one row per step) or "sinusoid".
        norm_style: "pre" (``x + f(LN(x))``, a final LayerNorm; tensor2tensor's default) or "post"
            (``LN(x + f(x))``, the paper's form).
        attention_bias: biases in the attention projections.
        decoder_start_token_id: the first decoder input of the sequence-to-sequence form (None: pad_token_id, or
            0 without one).
    """

    model_type = "seqp_ut"

    def __init__(
        self,
        num_attention_heads: int = 4,
        head_dim: int | None = None,
        recurrence_type: str = "act",
        act_type: str = "basic",
        act_epsilon: float = 0.01,
        act_halting_bias_init: float = 1.0,
        act_loss_weight: float = 0.01,
        act_force_halt_at_max: bool = False,
        act_loss_ignores_padding: bool = True,
        add_position_timing_signal: bool = True,
        add_step_timing_signal: bool = True,
        step_timing_signal_type: str = "learned",
        norm_style: str = "pre",
        attention_bias: bool = False,
        decoder_start_token_id: int | None = None,
        **kwargs,
    ):
        self.num_attention_heads = num_attention_heads
        self.head_dim = head_dim
        self.recurrence_type = recurrence_type
        self.act_type = act_type
        self.act_epsilon = act_epsilon
        self.act_halting_bias_init = act_halting_bias_init
        self.act_loss_weight = act_loss_weight
        self.act_force_halt_at_max = act_force_halt_at_max
        self.act_loss_ignores_padding = act_loss_ignores_padding
        self.add_position_timing_signal = add_position_timing_signal
        self.add_step_timing_signal = add_step_timing_signal
        self.step_timing_signal_type = step_timing_signal_type
        self.norm_style = norm_style
        self.attention_bias = attention_bias
        self.decoder_start_token_id = decoder_start_token_id
        super().__init__(**kwargs)

    @property
    def num_key_value_heads(self) -> int:
        return self.num_attention_heads

    @property
    def attention_head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads if self.head_dim is None else self.head_dim

    @property
    def layer_types(self) -> list[str]:
        """Cache layout: one KV slot per depth step."""
        return ["full_attention"] * self.num_hidden_layers

    def validate_fields(self) -> None:
        super().validate_fields()
        name = type(self).__name__
        require_positive_int(self, "num_attention_heads")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"{name}: hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                    f"({self.num_attention_heads}), or give head_dim"
                )
        else:
            require_positive_int(self, "head_dim")
        for field, choices in (
            ("recurrence_type", RECURRENCE_TYPES),
            ("act_type", ACT_TYPES),
            ("step_timing_signal_type", STEP_SIGNALS),
            ("norm_style", NORM_STYLES),
        ):
            require_choice(self, field, choices)
        epsilon = self.act_epsilon
        if not isinstance(epsilon, numbers.Real) or isinstance(epsilon, bool) or not 0 < epsilon < 1:
            raise ValueError(
                f"{name}.act_epsilon must be in (0, 1): a position halts once its halting probabilities sum past "
                f"1 - act_epsilon, so 0 or less never halts and 1 or more halts before any step; got {epsilon!r}"
            )
        for field in ("act_halting_bias_init", "act_loss_weight"):
            value = getattr(self, field)
            if (
                not isinstance(value, numbers.Real)
                or isinstance(value, bool)
                or value != value
                or abs(value) == float("inf")
            ):
                raise ValueError(f"{name}.{field} must be a finite number, got {value!r}")
        if self.act_loss_weight < 0:
            raise ValueError(f"{name}.act_loss_weight must be >= 0, got {self.act_loss_weight!r}")
        for field in (
            "act_force_halt_at_max",
            "act_loss_ignores_padding",
            "add_position_timing_signal",
            "add_step_timing_signal",
            "attention_bias",
        ):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{name}.{field} must be True or False, got {getattr(self, field)!r}")
