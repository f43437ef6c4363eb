"""Config of the Miras language models: Moneta, Yaad and Memora (`docs/architectures/miras.md`)."""

from __future__ import annotations

import math
import numbers

from hf_seqplugins import SeqConfig, require_choice, require_positive_int
from hf_seqplugins.kernels.test_time_memory import OPERATOR as TEST_TIME_MEMORY
from hf_seqplugins.kernels.test_time_memory import RETRIEVALS, VARIANTS


class MirasConfig(SeqConfig):
    """Blocks ``x + mixer(RMSNorm(x))`` then the SwiGLU feed-forward. The mixer is a test-time memory (`MirasMixer`:
    per head an MLP memory trained online on the keys and values by the variant's inner objective) except at
    `swa_layers`, which hold sliding-window softmax attention.

    Args:
        memory_variant: "yaad" (Huber attentional bias, l2 retention), "moneta" (l_p bias, l_q retention) or
            "memora" (l2 bias, KL retention: softmax-normalised positive weights).
        num_heads: heads H of the memory (and of the sliding-window attention).
        head_dim: d, the query, key and value size per head (None: hidden_size / num_heads); even when
            `swa_layers` is not empty (rotary embedding).
        memory_expansion: the memory MLP's hidden size E as a multiple of head_dim.
        memory_chunk: tokens per chunk of the chunk-parallel inner gradient descent: every inner gradient of a chunk
            is taken at the chunk-start weights (1: the exact per-token recurrence, slowest).
        retrieval: "dual_form" (each token reads the memory with its own updated weights) or "chunk_start" (with the
            chunk-start weights: cheaper, tokens of a chunk do not see each other through the memory).
        bias_power: p of Moneta's l_p attentional bias (>= 1).
        retention_power: q of Moneta's l_q retention (>= 2).
        memora_scale: c, each row of Memora's weights sums to c.
        smooth_eps: eps of the smooth signs ``e (e^2 + eps)^((p - 2) / 2)`` and of Moneta's q-norm.
        gate_rank: rank of the low-rank projections ``x -> R^gate_rank -> R^H`` of the per-head gates.
        conv_kernel_size: kernel of the depthwise causal convolution on q, k and v.
        eta_max: upper bound of the inner learning rate ``eta = eta_max * sigmoid(.)``. Larger bounds make the
            outer gradients through the inner updates explode (`docs/architectures/miras.md`, Stability).
        swa_layers: block indices using sliding-window attention instead of the memory (None: none).
        swa_window: W, the tokens a sliding-window query sees (itself and the W - 1 real tokens before it).
        rope_theta: base of the sliding-window attention's rotary embedding.
    """

    model_type = "seqp_miras"
    operators = (TEST_TIME_MEMORY,)

    def __init__(
        self,
        memory_variant: str = "yaad",
        num_heads: int = 16,
        head_dim: int | None = None,
        memory_expansion: int = 4,
        memory_chunk: int = 16,
        retrieval: str = "dual_form",
        bias_power: float = 3.0,
        retention_power: float = 4.0,
        memora_scale: float = 1.0,
        smooth_eps: float = 1e-6,
        gate_rank: int = 32,
        conv_kernel_size: int = 4,
        eta_max: float = 0.01,
        swa_layers: list[int] | None = None,
        swa_window: int = 512,
        rope_theta: float = 10000.0,
        **kwargs,
    ):
        self.memory_variant = memory_variant
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.memory_expansion = memory_expansion
        self.memory_chunk = memory_chunk
        self.retrieval = retrieval
        self.bias_power = bias_power
        self.retention_power = retention_power
        self.memora_scale = memora_scale
        self.smooth_eps = smooth_eps
        self.gate_rank = gate_rank
        self.conv_kernel_size = conv_kernel_size
        self.eta_max = eta_max
        self.swa_layers = [] if swa_layers is None else swa_layers
        self.swa_window = swa_window
        self.rope_theta = rope_theta
        super().__init__(**kwargs)

    @property
    def head_width(self) -> int:
        """d, the query, key and value size per head."""
        return self.hidden_size // self.num_heads if self.head_dim is None else self.head_dim

    @property
    def memory_hidden(self) -> int:
        """E, the memory MLP's hidden size."""
        return self.memory_expansion * self.head_width

    def block_kind(self, layer_idx: int) -> str:
        """ "swa" or "memory"."""
        return "swa" if layer_idx in self.swa_layers else "memory"

    def validate_fields(self) -> None:
        super().validate_fields()
        name = type(self).__name__
        require_choice(self, "memory_variant", VARIANTS)
        require_choice(self, "retrieval", RETRIEVALS)
        for field in ("num_heads", "memory_expansion", "memory_chunk", "gate_rank", "conv_kernel_size", "swa_window"):
            require_positive_int(self, field)
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"{name}: hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads}), "
                    "or give head_dim"
                )
        else:
            require_positive_int(self, "head_dim")
        for field, least in (("bias_power", 1), ("retention_power", 2)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not least <= value < math.inf:
                raise ValueError(f"{name}.{field} must be a finite number >= {least}, got {value!r}")
        for field in ("memora_scale", "smooth_eps", "eta_max", "rope_theta"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
                raise ValueError(f"{name}.{field} must be a finite number > 0, got {value!r}")
        layers = self.swa_layers
        if not isinstance(layers, (list, tuple)) or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_hidden_layers for i in layers
        ):
            raise ValueError(
                f"{name}.swa_layers must be a list of block indices in [0, {self.num_hidden_layers}), got {layers!r}"
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"{name}.swa_layers lists a block twice: {list(layers)!r}")
        if layers and self.head_width % 2:
            raise ValueError(
                f"{name}.head_dim must be even for the sliding-window attention's rotary embedding, "
                f"got {self.head_width}"
            )
