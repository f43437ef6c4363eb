"""Config of the Aaren language model (`docs/architectures/aaren.md`)."""

from __future__ import annotations

from hf_seqplugins import SeqConfig, require_positive_int
from hf_seqplugins.kernels.softmax_scan import OPERATOR as SOFTMAX_SCAN


class AarenConfig(SeqConfig):
    """Blocks ``x + AarenMixer(RMSNorm(x))`` then the SwiGLU feed-forward. The mixer is attention with a learned,
    input-independent query per layer and head: its outputs at every position are a softmax-weighted mean of the
    values so far, computed as a prefix scan (training, prefill) or one recurrent step per token (decoding, O(1)
    state per head).

    Args:
        num_heads: attention heads H.
        head_dim: key, query and value size per head (None: hidden_size / num_heads).
        use_scale: divide the scores q·k by sqrt(head_dim), as in attention.
        chunk_size: chunk length of the chunked scan (training and prefill; results do not depend on it).
    """

    model_type = "seqp_aaren"
    operators = (SOFTMAX_SCAN,)

    def __init__(
        self,
        num_heads: int = 4,
        head_dim: int | None = None,
        use_scale: bool = True,
        chunk_size: int = 64,
        **kwargs,
    ):
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.use_scale = use_scale
        self.chunk_size = chunk_size
        super().__init__(**kwargs)

    @property
    def head_width(self) -> int:
        return self.hidden_size // self.num_heads if self.head_dim is None else self.head_dim

    def validate_fields(self) -> None:
        super().validate_fields()
        require_positive_int(self, "num_heads")
        require_positive_int(self, "chunk_size")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"{type(self).__name__}: hidden_size ({self.hidden_size}) must be divisible by num_heads "
                    f"({self.num_heads}), or give head_dim"
                )
        else:
            require_positive_int(self, "head_dim")
        if not isinstance(self.use_scale, bool):
            raise ValueError(f"{type(self).__name__}.use_scale must be True or False, got {self.use_scale!r}")
