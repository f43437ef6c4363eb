"""Config of the TCNCA language model (`docs/architectures/tcnca.md`)."""

from __future__ import annotations

from hf_seqplugins import SeqConfig, require_choice, require_positive_int
from hf_seqplugins.kernels.dilated_conv import ACTIVATIONS, receptive_field
from hf_seqplugins.kernels.dilated_conv import OPERATOR as DILATED_CONV


class TCNCAConfig(SeqConfig):
    """Blocks ``x + u * (h - x)`` (MEGA's gated attention block, its EMA replaced by a temporal convolution
    network) then the SwiGLU feed-forward. The mixer normalises x, runs a causal dilated depthwise convolution
    stack (the TCN) along time, gates it, and attends with single-head softmax attention inside non-overlapping
    chunks of `chunk_size` tokens of each sequence, with a learned bias per relative offset in the chunk.

    Args:
        zdim: width of the shared query / key representation z.
        hdim: width of the values and of the reset gate (None: 2 * hidden_size).
        chunk_size: attention chunk length C; a token attends to the earlier tokens of its own chunk only.
        tcn_kernel_size: taps K of every convolution layer (>= 2).
        tcn_dilation_factor: f; layer i is dilated by f**i.
        tcn_depth: number of convolution layers D.
        tcn_activation: "gelu" or "none", applied between the convolution layers.
        attention_dropout: dropout on the attention weights (training only).
        mixer_dropout: dropout on the gated TCN output m and on the attention branch h (training only).
    """

    model_type = "seqp_tcnca"
    operators = (DILATED_CONV,)

    def __init__(
        self,
        zdim: int = 64,
        hdim: int | None = None,
        chunk_size: int = 128,
        tcn_kernel_size: int = 3,
        tcn_dilation_factor: int = 2,
        tcn_depth: int = 4,
        tcn_activation: str = "gelu",
        attention_dropout: float = 0.0,
        mixer_dropout: float = 0.0,
        **kwargs,
    ):
        self.zdim = zdim
        self.hdim = hdim
        self.chunk_size = chunk_size
        self.tcn_kernel_size = tcn_kernel_size
        self.tcn_dilation_factor = tcn_dilation_factor
        self.tcn_depth = tcn_depth
        self.tcn_activation = tcn_activation
        self.attention_dropout = attention_dropout
        self.mixer_dropout = mixer_dropout
        super().__init__(**kwargs)

    @property
    def value_width(self) -> int:
        return 2 * self.hidden_size if self.hdim is None else self.hdim

    @property
    def receptive_field(self) -> int:
        """Tokens one TCN output sees: R = 1 + (K - 1)(f^D - 1)/(f - 1) (1 + (K - 1) D for f = 1)."""
        return receptive_field(self.tcn_kernel_size, self.tcn_dilation_factor, self.tcn_depth)

    def validate_fields(self) -> None:
        super().validate_fields()
        for name in ("zdim", "chunk_size", "tcn_dilation_factor", "tcn_depth"):
            require_positive_int(self, name)
        if self.hdim is not None:
            require_positive_int(self, "hdim")
        value = self.tcn_kernel_size
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{type(self).__name__}.tcn_kernel_size must be an integer >= 2, got {value!r}")
        require_choice(self, "tcn_activation", ACTIVATIONS)
        for name in ("attention_dropout", "mixer_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{type(self).__name__}.{name} must be a number in [0, 1), got {value!r}")
