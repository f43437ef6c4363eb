"""Config of the xLSTM language model (the xLSTM-7B block; `docs/architectures/xlstm.md`)."""

from __future__ import annotations

import math

from hf_seqplugins import SeqConfig, require_choice, require_positive_int
from hf_seqplugins.kernels.mlstm import INPUT_GATES
from hf_seqplugins.kernels.mlstm import OPERATOR as MLSTM
from hf_seqplugins.kernels.rnn import OPERATOR as HEADWISE_RNN


class XLSTMConfig(SeqConfig):
    """xLSTM-7B blocks: ``x + mLSTMLayer(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))``; sLSTM blocks where
    `block_pattern` says so (xLSTM paper's mixed stacks, e.g. "mmsm" repeated).

    Args:
        num_heads: mLSTM heads NH; head dims DK = hidden_size * qk_dim_factor / NH,
            DV = hidden_size * v_dim_factor / NH.
        qk_dim_factor, v_dim_factor: query/key and value widths as fractions of hidden_size (7B: 0.5 and 1.0).
        gate_soft_cap: soft cap ``c tanh(x / c)`` of the input/forget gate pre-activations (7B: 15).
        output_logit_soft_cap: soft cap of the logits (7B: 30; 0 or None disables it).
        input_gate: "exp" (mLSTM with the max stabiliser) or "sigmoid" (mLSTMsig).
        normalize: mLSTMsig only: divide by the normalizer (True) or not.
        mlstm_eps: epsilon added to the mLSTM normalizer.
        chunk_size: chunk length of the chunkwise kernels (training and prefill).
        use_bias: biases on the q/k/v/output-gate/out projections (the feed-forward and norms have none).
        block_pattern: per block "m" (mLSTM) or "s" (sLSTM), e.g. "mmsm"; repeated to num_hidden_layers if
            shorter; default all "m" (xLSTM-7B).
        slstm_num_heads: heads of the sLSTM blocks.
        ffn_proj_factor, ffn_round_up_to_multiple_of: intermediate_size (when not given) =
            hidden_size * ffn_proj_factor rounded up to the multiple (7B: 2.667 and 64 -> 10944 for 4096).
        initializer_range: std of the "small init" of embeddings and projections; default sqrt(2 / (5 D)).
        transformers_kernel_settings: how transformers' own xLSTM runs its kernels (`mode`, `chunkwise_kernel`,
            ...), kept from a converted model so converting back restores them; seqp_xlstm does not read them.
    """

    model_type = "seqp_xlstm"
    operators = (MLSTM, HEADWISE_RNN)

    def __init__(
        self,
        num_heads: int = 4,
        qk_dim_factor: float = 0.5,
        v_dim_factor: float = 1.0,
        gate_soft_cap: float = 15.0,
        output_logit_soft_cap: float | None = 30.0,
        input_gate: str = "exp",
        normalize: bool = True,
        mlstm_eps: float = 1e-6,
        chunk_size: int = 64,
        use_bias: bool = False,
        block_pattern: str = "m",
        slstm_num_heads: int = 4,
        ffn_proj_factor: float = 2.667,
        ffn_round_up_to_multiple_of: int = 64,
        intermediate_size: int | None = None,
        norm_eps: float = 1e-6,
        initializer_range: float | None = None,
        tie_word_embeddings: bool = False,
        transformers_kernel_settings: dict | None = None,
        **kwargs,
    ):
        self.num_heads = num_heads
        self.transformers_kernel_settings = dict(transformers_kernel_settings or {})
        self.qk_dim_factor = qk_dim_factor
        self.v_dim_factor = v_dim_factor
        self.gate_soft_cap = gate_soft_cap
        self.output_logit_soft_cap = output_logit_soft_cap
        self.input_gate = input_gate
        self.normalize = normalize
        self.mlstm_eps = mlstm_eps
        self.chunk_size = chunk_size
        self.use_bias = use_bias
        self.block_pattern = block_pattern
        self.slstm_num_heads = slstm_num_heads
        self.ffn_proj_factor = ffn_proj_factor
        self.ffn_round_up_to_multiple_of = ffn_round_up_to_multiple_of
        super().__init__(
            intermediate_size=intermediate_size,
            norm_eps=norm_eps,
            initializer_range=initializer_range,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def qk_head_dim(self) -> int:
        return int(self.hidden_size * self.qk_dim_factor) // self.num_heads

    @property
    def v_head_dim(self) -> int:
        return int(self.hidden_size * self.v_dim_factor) // self.num_heads

    @property
    def block_types(self) -> list[str]:
        """ "m" or "s" for each block."""
        pattern = self.block_pattern * math.ceil(self.num_hidden_layers / len(self.block_pattern))
        return list(pattern[: self.num_hidden_layers])

    def validate_fields(self) -> None:
        require_positive_int(self, "hidden_size")  # the defaults below derive from it
        if self.intermediate_size is None:
            multiple = self.ffn_round_up_to_multiple_of
            self.intermediate_size = math.ceil(self.hidden_size * self.ffn_proj_factor / multiple) * multiple
        if self.initializer_range is None:
            self.initializer_range = math.sqrt(2 / (5 * self.hidden_size))
        super().validate_fields()
        name = type(self).__name__
        for field in ("num_heads", "chunk_size", "slstm_num_heads"):
            require_positive_int(self, field)
        require_choice(self, "input_gate", INPUT_GATES)
        for field, value in (
            ("qk", int(self.hidden_size * self.qk_dim_factor)),
            ("v", int(self.hidden_size * self.v_dim_factor)),
        ):
            if value < self.num_heads or value % self.num_heads:
                raise ValueError(
                    f"{name}: int(hidden_size * {field}_dim_factor) = {value} must be a positive multiple of "
                    f"num_heads ({self.num_heads})"
                )
        if not isinstance(self.block_pattern, str) or not self.block_pattern or set(self.block_pattern) - {"m", "s"}:
            raise ValueError(
                f"{name}.block_pattern must be a non-empty string of 'm' (mLSTM) and 's' (sLSTM), "
                f"got {self.block_pattern!r}"
            )
        if "s" in self.block_types:
            if self.hidden_size % self.slstm_num_heads:
                raise ValueError(
                    f"{name}: hidden_size ({self.hidden_size}) must be divisible by "
                    f"slstm_num_heads ({self.slstm_num_heads})"
                )
            common = {"auto"} | (set(MLSTM.backends) & set(HEADWISE_RNN.backends))
            if self.kernel_backend not in common:
                raise ValueError(
                    f"{name}.kernel_backend {self.kernel_backend!r} is not a backend of the sLSTM blocks' operator; "
                    f"with sLSTM blocks choose one of {sorted(common)} "
                    "(or pick per operator with hf_seqplugins.use_backend(mlstm=...))"
                )
        for field in ("gate_soft_cap", "output_logit_soft_cap", "mlstm_eps"):
            value = getattr(self, field)
            if field != "mlstm_eps" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(
                    f"{name}.{field} must be a number >= 0{' or None' if field != 'mlstm_eps' else ''}, got {value!r}"
                )
