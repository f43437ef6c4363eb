"""xLSTM: mLSTM (matrix memory) blocks in the xLSTM-7B ("xLSTM Large") layout, optionally mixed with sLSTM blocks."""

from .configuration import XLSTMConfig
from .modeling import MLSTMLayer, XLSTMForCausalLM, XLSTMForSequenceClassification, XLSTMModel

__all__ = ["MLSTMLayer", "XLSTMConfig", "XLSTMForCausalLM", "XLSTMForSequenceClassification", "XLSTMModel"]
