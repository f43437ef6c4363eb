"""Config of the JRT-RNN language model (`docs/architectures/jrt.md`)."""

from __future__ import annotations

import math

from hf_seqplugins import SeqConfig, require_positive_int
from hf_seqplugins.kernels.feature_linear_attention import OPERATOR as FEATURE_LINEAR_ATTENTION


class JRTConfig(SeqConfig):
    """Blocks ``x + mixer(RMSNorm(x))`` then the SwiGLU feed-forward, the mixer chosen per block: prefix linear
    attention (PLA) at `pla_layers`, sliding-window softmax attention at `swa_layers`, a gated short convolution
    (BaseConv) elsewhere.

    Args:
        enc_length: M, the encoder region: the first M real tokens of a sequence, read non-causally by PLA's
            encoder projections (0: no encoder; PLA is then causal Taylor linear attention).
        feature_dim: f, the size of PLA's query and key projections per head; the Taylor feature map gives
            1 + f + f^2 features.
        num_heads: heads of PLA and of the sliding-window attention.
        head_dim: value size per head (None: hidden_size / num_heads); even (rotary embedding).
        eps: added to PLA's denominator.
        pla_layers, swa_layers: block indices of the PLA and sliding-window blocks (disjoint). None: the released
            model's pattern, repeated every 5 blocks up to the depth (PLA at 1, 6, 11, ..., sliding window at 2, 7,
            12, ...; the 26-block default gives exactly the released 360M model's).
        swa_window: W, the tokens a sliding-window query sees (itself and the W - 1 before it).
        conv_kernel_size: kernel size of BaseConv's causal depthwise convolution.
        conv_expand: BaseConv's inner width as a multiple of hidden_size.
        rope_theta: base of the sliding-window attention's rotary embedding.
        chunk_size: chunk length of the chunked linear attention (results do not depend on it).
        mlm_weight: weight of the masked-LM loss on the prefix in the JRT objective (`JRTForCausalLM`).
        mlm_probability: fraction of prefix tokens `JRTDataCollator` replaces by `mask_token_id`.
        mask_token_id: the token id of the mask (None: no masked-LM training).
    """

    model_type = "seqp_jrt"
    operators = (FEATURE_LINEAR_ATTENTION,)

    def __init__(
        self,
        enc_length: int = 1024,
        feature_dim: int = 16,
        num_heads: int = 16,
        head_dim: int | None = None,
        eps: float = 1e-12,
        pla_layers: list[int] | None = None,
        swa_layers: list[int] | None = None,
        swa_window: int = 256,
        conv_kernel_size: int = 3,
        conv_expand: int = 4,
        rope_theta: float = 10000.0,
        chunk_size: int = 64,
        mlm_weight: float = 0.25,
        mlm_probability: float = 0.15,
        mask_token_id: int | None = None,
        num_hidden_layers: int = 26,
        **kwargs,
    ):
        self.enc_length = enc_length
        self.feature_dim = feature_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.eps = eps
        depth = range(num_hidden_layers) if isinstance(num_hidden_layers, int) else range(0)
        self.pla_layers = [i for i in depth if i % 5 == 1] if pla_layers is None else list(pla_layers)
        self.swa_layers = [i for i in depth if i % 5 == 2] if swa_layers is None else list(swa_layers)
        self.swa_window = swa_window
        self.conv_kernel_size = conv_kernel_size
        self.conv_expand = conv_expand
        self.rope_theta = rope_theta
        self.chunk_size = chunk_size
        self.mlm_weight = mlm_weight
        self.mlm_probability = mlm_probability
        self.mask_token_id = mask_token_id
        super().__init__(num_hidden_layers=num_hidden_layers, **kwargs)

    @property
    def head_width(self) -> int:
        return self.hidden_size // self.num_heads if self.head_dim is None else self.head_dim

    def block_kind(self, layer_idx: int) -> str:
        """ "pla", "swa" or "conv"."""
        if layer_idx in self.pla_layers:
            return "pla"
        return "swa" if layer_idx in self.swa_layers else "conv"

    def validate_fields(self) -> None:
        super().validate_fields()
        name = type(self).__name__
        require_positive_int(self, "enc_length", allow_zero=True)
        for field in ("feature_dim", "num_heads", "swa_window", "conv_kernel_size", "conv_expand", "chunk_size"):
            require_positive_int(self, field)
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"{name}: hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads}), "
                    "or give head_dim"
                )
        else:
            require_positive_int(self, "head_dim")
        if self.swa_layers and self.head_width % 2:
            raise ValueError(f"{name}.head_dim must be even for the rotary embedding, got {self.head_width}")
        for field in ("pla_layers", "swa_layers"):
            layers = getattr(self, field)
            if any(
                isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_hidden_layers for i in layers
            ):
                raise ValueError(
                    f"{name}.{field} must be block indices in [0, {self.num_hidden_layers}), got {layers!r}"
                )
            if len(set(layers)) != len(layers):
                raise ValueError(f"{name}.{field} lists a block twice: {layers!r}")
        both = sorted(set(self.pla_layers) & set(self.swa_layers))
        if both:
            raise ValueError(f"{name}: pla_layers and swa_layers both list blocks {both}")
        for field in ("eps", "mlm_weight"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name}.{field} must be a finite number >= 0, got {value!r}")
        value = self.mlm_probability
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name}.mlm_probability must be a number in [0, 1], got {value!r}")
        if (
            not isinstance(self.rope_theta, (int, float))
            or isinstance(self.rope_theta, bool)
            or not self.rope_theta > 0
        ):
            raise ValueError(f"{name}.rope_theta must be a number > 0, got {self.rope_theta!r}")
        token = self.mask_token_id
        if token is not None and (
            isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < self.vocab_size
        ):
            raise ValueError(
                f"{name}.mask_token_id must be None or a token id in [0, {self.vocab_size}), got {token!r}"
            )
