"""Configs of the classic and head-wise RNN language models (`docs/architectures/rnn.md`)."""

from __future__ import annotations

from hf_seqplugins import SeqConfig, require_choice, require_positive_int
from hf_seqplugins.kernels.rnn import OPERATOR as HEADWISE_RNN


class HeadwiseRNNConfig(SeqConfig):
    """Shared fields of the RNN family. `num_heads` > 1 gives FlashRNN's head-wise block-diagonal
    recurrence: `num_heads` independent RNNs of size `head_dim`, mixed only by the projections.

    Args:
        num_heads: number of independent recurrent heads (1 = a classic dense RNN).
        head_dim: hidden size of each head; default `hidden_size // num_heads`.
    """

    operators = (HEADWISE_RNN,)
    cell = ""

    def __init__(self, num_heads: int = 1, head_dim: int | None = None, **kwargs):
        self.num_heads = num_heads
        self.head_dim = head_dim
        super().__init__(**kwargs)

    @property
    def cell_name(self) -> str:
        """The operator's cell for this config."""
        return self.cell

    def validate_fields(self) -> None:
        super().validate_fields()
        require_positive_int(self, "num_heads")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"{type(self).__name__}: hidden_size ({self.hidden_size}) must be divisible by num_heads "
                    f"({self.num_heads}) unless head_dim is given"
                )
            self.head_dim = self.hidden_size // self.num_heads
        require_positive_int(self, "head_dim")


class ElmanConfig(HeadwiseRNNConfig):
    """Elman RNN, `h_t = act(W x_t + R h_{t-1} + b)`. `nonlinearity`: "tanh" or "relu"."""

    model_type = "seqp_elman"

    def __init__(self, nonlinearity: str = "tanh", **kwargs):
        self.nonlinearity = nonlinearity
        super().__init__(**kwargs)

    @property
    def cell_name(self) -> str:
        return f"elman_{self.nonlinearity}"

    def validate_fields(self) -> None:
        super().validate_fields()
        require_choice(self, "nonlinearity", ("tanh", "relu"))


class LSTMConfig(HeadwiseRNNConfig):
    """LSTM with PyTorch's gate order `[i, f, g, o]`."""

    model_type = "seqp_lstm"
    cell = "lstm"


class GRUConfig(HeadwiseRNNConfig):
    """GRU with PyTorch's conventions: gates `[r, z, n]`, `h = (1 - z) n + z h_prev`."""

    model_type = "seqp_gru"
    cell = "gru"


class SLSTMConfig(HeadwiseRNNConfig):
    """sLSTM (xLSTM): exponential input gate, normalizer and max-stabilizer states.

    Args:
        slstm_normalizer_clamp: FlashRNN's `n = max(n, 1)` (True) or the xLSTM repository's unclamped
            normalizer (False); they differ only for user-supplied states with n < 1.
    """

    model_type = "seqp_slstm"
    cell = "slstm"

    def __init__(self, slstm_normalizer_clamp: bool = True, num_heads: int = 4, **kwargs):
        self.slstm_normalizer_clamp = slstm_normalizer_clamp
        super().__init__(num_heads=num_heads, **kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        require_choice(self, "slstm_normalizer_clamp", (True, False))
