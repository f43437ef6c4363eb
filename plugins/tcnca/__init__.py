"""TCNCA (`docs/architectures/tcnca.md`): MEGA's gated attention block with a dilated causal temporal
convolution network in place of its EMA and softmax attention inside non-overlapping chunks; decoding keeps the
convolution windows and the current chunk's keys and values."""

from .configuration import TCNCAConfig
from .modeling import TCNCAForCausalLM, TCNCAForSequenceClassification, TCNCAMixer, TCNCAModel, chunked_attention

__all__ = [
    "TCNCAConfig",
    "TCNCAForCausalLM",
    "TCNCAForSequenceClassification",
    "TCNCAMixer",
    "TCNCAModel",
    "chunked_attention",
]
