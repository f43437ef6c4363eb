"""Config of the Mamba-2 language model and its state-collapse options (`docs/architectures/mamba2.md`)."""

from __future__ import annotations

import math

from hf_seqplugins import SeqConfig, require_positive_int
from hf_seqplugins.kernels.ssd import OPERATOR as SSD


class Mamba2Config(SeqConfig):
    """Mamba-2 blocks: ``x + Mamba2Mixer(RMSNorm(x))`` (no feed-forward unless `intermediate_size` > 0).

    Mixer widths: d_inner = expand * hidden_size = num_heads * head_dim; in_proj gives [z | x B C | dt] of sizes
    d_inner, d_inner + 2 G N, num_heads; a causal depthwise conv (kernel `conv_kernel`) runs over x B C.

    Args:
        state_size: N, the state size per head and channel (B and C width per group).
        head_dim: P, channels per head; num_heads = expand * hidden_size / head_dim.
        n_groups: G, groups sharing B and C (heads map to groups in contiguous blocks).
        expand: d_inner / hidden_size.
        conv_kernel: width of the causal depthwise convolution.
        use_conv_bias, use_bias: bias of the convolution; of in_proj and out_proj.
        chunk_size: chunk length of the chunked SSD (training and prefill).
        time_step_min, time_step_max, time_step_floor: dt_bias init, softplus(dt_bias) ~ logU[min, max] >= floor.
        time_step_limit: (low, high) clamp of Δ after the softplus.
        A_init_range: A = -exp(A_log) with exp(A_log) ~ U[A_init_range] (mamba_ssm's init; transformers uses 1..H).
        sc_decay_scale: Stuffed Mamba method 1, λ_α <= 1: every step's decay becomes λ_α exp(Δ A) ("forget more").
        sc_input_scale: λ_B: B becomes λ_B B ("remember less").
        sc_dt_scale: Δ becomes sc_dt_scale Δ (LongMamba-style baseline).
        sc_state_norm_threshold: Stuffed Mamba method 2: after every `sc_state_norm_chunk` real tokens and at the
            end of every call (so after every decoded token) each head's state is rescaled to Frobenius norm
            <= τ. A number (all layers and heads) or a list `[num_hidden_layers][num_heads]`; None = off.
        sc_state_norm_chunk: prefill chunk between state normalisations.
        sc_sliding_window: Stuffed Mamba method 3, a state-level window r: the output at each token reads a
            state restarted from zero r + 1 to 2r real tokens back (all tokens while fewer than r have been read;
            two states, swapped every r real tokens: O(1) per token). Runs the step form, token by token, also in
            prefill. None = off.
        All sc_ options default to no change (outputs bit-identical to plain Mamba-2) and are read at every
        forward, so they can be switched on a trained model: `model.config.sc_decay_scale = 0.999`.
        xb_heads: MaTVLM's attention-shaped layout for grouped-query teachers: x and B are projected for
            `xb_heads` heads and repeated to every head (needs n_groups == num_heads and state_size == head_dim);
            None = the standard layout.
        attention_layers: indices of blocks that are softmax attention instead of Mamba-2 (a hybrid); these
            use num_attention_heads, num_key_value_heads, attention_head_dim (default hidden_size /
            num_attention_heads), rope_theta and attention_bias, like a Llama layer.
    """

    model_type = "seqp_mamba2"
    operators = (SSD,)

    def __init__(
        self,
        state_size: int = 64,
        head_dim: int = 32,
        n_groups: int = 1,
        expand: int = 2,
        conv_kernel: int = 4,
        use_conv_bias: bool = True,
        use_bias: bool = False,
        chunk_size: int = 64,
        time_step_min: float = 0.001,
        time_step_max: float = 0.1,
        time_step_floor: float = 1e-4,
        time_step_limit: tuple[float, float] = (0.0, float("inf")),
        A_init_range: tuple[float, float] = (1.0, 16.0),
        sc_decay_scale: float = 1.0,
        sc_input_scale: float = 1.0,
        sc_dt_scale: float = 1.0,
        sc_state_norm_threshold: float | list[list[float]] | None = None,
        sc_state_norm_chunk: int = 128,
        sc_sliding_window: int | None = None,
        xb_heads: int | None = None,
        attention_layers: list[int] = (),
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        attention_head_dim: int | None = None,
        rope_theta: float = 10000.0,
        attention_bias: bool = False,
        intermediate_size: int = 0,
        **kwargs,
    ):
        self.state_size = state_size
        self.head_dim = head_dim
        self.n_groups = n_groups
        self.expand = expand
        self.conv_kernel = conv_kernel
        self.use_conv_bias = use_conv_bias
        self.use_bias = use_bias
        self.chunk_size = chunk_size
        self.time_step_min = time_step_min
        self.time_step_max = time_step_max
        self.time_step_floor = time_step_floor
        self.time_step_limit = tuple(time_step_limit)
        self.A_init_range = tuple(A_init_range)
        self.sc_decay_scale = sc_decay_scale
        self.sc_input_scale = sc_input_scale
        self.sc_dt_scale = sc_dt_scale
        self.sc_state_norm_threshold = sc_state_norm_threshold
        self.sc_state_norm_chunk = sc_state_norm_chunk
        self.sc_sliding_window = sc_sliding_window
        self.xb_heads = xb_heads
        self.attention_layers = list(attention_layers)
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.rope_theta = rope_theta
        self.attention_bias = attention_bias
        super().__init__(intermediate_size=intermediate_size, **kwargs)

    @property
    def d_inner(self) -> int:
        return self.expand * self.hidden_size

    @property
    def num_heads(self) -> int:
        return self.d_inner // self.head_dim

    @property
    def xb_dims(self) -> tuple[int, int]:
        """Projected widths of x and B (before the repeat to every head in the MaTVLM layout)."""
        if self.xb_heads is None:
            return self.d_inner, self.n_groups * self.state_size
        return self.xb_heads * self.head_dim, self.xb_heads * self.state_size

    @property
    def conv_dim(self) -> int:
        return sum(self.xb_dims) + self.n_groups * self.state_size

    @property
    def layer_types(self) -> list[str]:
        """Cache layout: a KV cache for attention blocks, conv and SSM states for the others."""
        return [
            "full_attention" if i in self.attention_layers else "linear_attention"
            for i in range(self.num_hidden_layers)
        ]

    def validate_fields(self) -> None:
        super().validate_fields()
        name = type(self).__name__
        for field in ("state_size", "head_dim", "n_groups", "expand", "conv_kernel", "chunk_size"):
            require_positive_int(self, field)
        if self.d_inner % self.head_dim:
            raise ValueError(
                f"{name}: expand * hidden_size ({self.d_inner}) must be divisible by head_dim ({self.head_dim})"
            )
        if self.num_heads % self.n_groups:
            raise ValueError(f"{name}: num_heads ({self.num_heads}) must be divisible by n_groups ({self.n_groups})")
        low, high = self.time_step_limit
        if not 0 <= low < high:
            raise ValueError(
                f"{name}.time_step_limit must be (low, high) with 0 <= low < high, got {self.time_step_limit!r}"
            )
        if not 0 < self.A_init_range[0] <= self.A_init_range[1]:
            raise ValueError(f"{name}.A_init_range must be (low, high) with 0 < low <= high, got {self.A_init_range!r}")
        if not 0 < self.time_step_min <= self.time_step_max:
            raise ValueError(
                f"{name}: need 0 < time_step_min <= time_step_max, got {self.time_step_min}, {self.time_step_max}"
            )
        if self.attention_head_dim is None:
            self.attention_head_dim = self.hidden_size // self.num_attention_heads
        if any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_hidden_layers
            for i in self.attention_layers
        ):
            raise ValueError(
                f"{name}.attention_layers must be block indices in [0, {self.num_hidden_layers}), "
                f"got {self.attention_layers!r}"
            )
        self.attention_layers = sorted(set(self.attention_layers))
        if self.attention_layers:
            for field in ("num_attention_heads", "num_key_value_heads", "attention_head_dim"):
                require_positive_int(self, field)
            if self.num_attention_heads % self.num_key_value_heads:
                raise ValueError(
                    f"{name}: num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                    f"num_key_value_heads ({self.num_key_value_heads})"
                )
            if self.attention_head_dim % 2:
                raise ValueError(
                    f"{name}.attention_head_dim must be even (rotary embedding), got {self.attention_head_dim}"
                )
        if self.xb_heads is not None:
            require_positive_int(self, "xb_heads")
            if self.n_groups != self.num_heads or self.state_size != self.head_dim or self.num_heads % self.xb_heads:
                raise ValueError(
                    f"{name}.xb_heads needs n_groups == num_heads ({self.n_groups} vs {self.num_heads}), "
                    f"state_size == head_dim ({self.state_size} vs {self.head_dim}) and num_heads divisible by "
                    f"xb_heads ({self.xb_heads})"
                )
        self.check_state_collapse_options()

    def check_state_collapse_options(self, layer_idx: int | None = None) -> None:
        """Validate the `sc_*` options. They are read at every forward (so they can be switched on a trained
        model), and each mixer calls this there too, for its own row of a per-layer threshold (`layer_idx`;
        None: every row): a value edited after construction gets the same error as at construction."""
        name = type(self).__name__
        require_positive_int(self, "sc_state_norm_chunk")
        for field in ("sc_decay_scale", "sc_input_scale", "sc_dt_scale"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and 0 < value and math.isfinite(value)):
                raise ValueError(f"{name}.{field} must be a finite number > 0, got {value!r}")
        if self.sc_decay_scale > 1:
            raise ValueError(f"{name}.sc_decay_scale must be <= 1 (it shrinks the decay), got {self.sc_decay_scale!r}")
        threshold = self.sc_state_norm_threshold
        if self.sc_sliding_window is not None:
            require_positive_int(self, "sc_sliding_window")
            if threshold is not None:
                raise ValueError(f"{name}: choose one of sc_sliding_window and sc_state_norm_threshold")
        if threshold is not None:
            if isinstance(threshold, (int, float)):
                valid = threshold > 0
            else:
                rows = (
                    threshold
                    if layer_idx is None or len(threshold) != self.num_hidden_layers
                    else [threshold[layer_idx]]
                )
                valid = len(threshold) == self.num_hidden_layers and all(
                    len(row) == self.num_heads and all(t > 0 for t in row) for row in rows
                )
            if not valid:
                raise ValueError(
                    f"{name}.sc_state_norm_threshold must be None, a number > 0, or a [num_hidden_layers][num_heads] = "
                    f"[{self.num_hidden_layers}][{self.num_heads}] list of numbers > 0"
                )
