"""Aaren (`docs/architectures/aaren.md`): attention with a learned query per layer and head, computed as a
softmax-weighted prefix scan in training and as an O(1)-state recurrence when decoding."""

from .configuration import AarenConfig
from .modeling import (
    AarenForCausalLM,
    AarenForSequenceClassification,
    AarenForTimeSeriesPrediction,
    AarenMixer,
    AarenModel,
)

__all__ = [
    "AarenConfig",
    "AarenForCausalLM",
    "AarenForSequenceClassification",
    "AarenForTimeSeriesPrediction",
    "AarenMixer",
    "AarenModel",
]
