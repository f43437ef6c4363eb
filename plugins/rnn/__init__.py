"""RNN family: Elman, LSTM, GRU, FlashRNN head-wise variants and sLSTM (`docs/architectures/rnn.md`).

`LSTM`, `GRU` and `RNN` are drop-in replacements for `torch.nn`'s layers with a `backend` argument.
"""

from .configuration import ElmanConfig, GRUConfig, HeadwiseRNNConfig, LSTMConfig, SLSTMConfig
from .layers import GRU, LSTM, RNN
from .modeling import (
    ElmanForCausalLM,
    ElmanForSequenceClassification,
    ElmanModel,
    GRUForCausalLM,
    GRUForSequenceClassification,
    GRUModel,
    HeadwiseRNNMixer,
    LSTMForCausalLM,
    LSTMForSequenceClassification,
    LSTMModel,
    SLSTMForCausalLM,
    SLSTMForSequenceClassification,
    SLSTMModel,
)

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "ElmanConfig",
    "ElmanForCausalLM",
    "ElmanForSequenceClassification",
    "ElmanModel",
    "GRUConfig",
    "GRUForCausalLM",
    "GRUForSequenceClassification",
    "GRUModel",
    "HeadwiseRNNConfig",
    "HeadwiseRNNMixer",
    "LSTMConfig",
    "LSTMForCausalLM",
    "LSTMForSequenceClassification",
    "LSTMModel",
    "SLSTMConfig",
    "SLSTMForCausalLM",
    "SLSTMForSequenceClassification",
    "SLSTMModel",
]
