"""Config of the ParaRNN language model (`docs/architectures/pararnn.md`)."""

from __future__ import annotations

import math

from hf_seqplugins import SeqConfig, require_choice, require_positive_int
from hf_seqplugins.kernels.linear_scan import OPERATOR as LINEAR_SCAN

from .cells import CELLS

MODES = ("parallel", "sequential")


class ParaRNNConfig(SeqConfig):
    """Blocks ``x + ParaRNNMixer(RMSNorm(x))`` then the SwiGLU feed-forward: a head-block-diagonal input
    projection to the cell's pre-activations, the nonlinear recurrence (ParaGRU or ParaLSTM, diagonal recurrent
    weights), and an output projection. The block around the cell is our assumption: the paper's is unpublished.

    Args:
        cell: "gru" (ParaGRU), "lstm_cifg" (ParaLSTM), "slstm_diag" (sLSTM with diagonal recurrence), or a name
            given to `cells.register_cell`.
        state_size: N, the recurrent state width (None: hidden_size).
        num_heads: head blocks of the input projection (hidden_size and state_size divisible by it).
        mode: "parallel" (Newton iterations over the whole sequence, training and prefill) or "sequential" (the
            step loop everywhere). Decoding single tokens always steps.
        newton_max_iterations, newton_tolerance: Newton stops once max |h_t - step(h_{t-1}, x_t)| <= tolerance, or
            after this many iterations (after k iterations the first k states are exact; T always suffice).
        newton_fallback: on non-convergence run the sequential loop instead (always with a warning); False keeps
            the last iterate (still warned).
        kernel_backend: the linear scans' backend; on a CPU "chunked" (O(T) work) beats "auto" (= "torch", the
            log-depth doubling scan, made for wide parallel hardware).
    """

    model_type = "seqp_pararnn"
    operators = (LINEAR_SCAN,)

    def __init__(
        self,
        cell: str = "gru",
        state_size: int | None = None,
        num_heads: int = 4,
        mode: str = "parallel",
        newton_max_iterations: int = 8,
        newton_tolerance: float = 1e-5,
        newton_fallback: bool = True,
        **kwargs,
    ):
        self.cell = cell
        self.state_size = state_size
        self.num_heads = num_heads
        self.mode = mode
        self.newton_max_iterations = newton_max_iterations
        self.newton_tolerance = newton_tolerance
        self.newton_fallback = newton_fallback
        super().__init__(**kwargs)

    @property
    def state_width(self) -> int:
        return self.hidden_size if self.state_size is None else self.state_size

    def validate_fields(self) -> None:
        super().validate_fields()
        name = type(self).__name__
        require_choice(self, "cell", tuple(CELLS))
        require_choice(self, "mode", MODES)
        require_positive_int(self, "num_heads")
        require_positive_int(self, "newton_max_iterations")
        if self.state_size is not None:
            require_positive_int(self, "state_size")
        if self.hidden_size % self.num_heads or self.state_width % self.num_heads:
            raise ValueError(
                f"{name}: hidden_size ({self.hidden_size}) and state_size ({self.state_width}) must be "
                f"divisible by num_heads ({self.num_heads})"
            )
        if not (
            isinstance(self.newton_tolerance, (int, float))
            and self.newton_tolerance >= 0
            and math.isfinite(self.newton_tolerance)
        ):
            raise ValueError(f"{name}.newton_tolerance must be a finite number >= 0, got {self.newton_tolerance!r}")
