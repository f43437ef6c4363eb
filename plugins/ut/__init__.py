"""Universal Transformer (`docs/architectures/ut.md`): one shared self-attention + feed-forward layer applied in
depth, a fixed number of steps or per position with adaptive computation time (ACT)."""

from .configuration import UniversalTransformerConfig
from .modeling import (
    UniversalTransformerEncoder,
    UniversalTransformerForCausalLM,
    UniversalTransformerForSeq2SeqLM,
    UniversalTransformerForSequenceClassification,
    UniversalTransformerLayer,
    UniversalTransformerModel,
)

__all__ = [
    "UniversalTransformerConfig",
    "UniversalTransformerForCausalLM",
    "UniversalTransformerEncoder",
    "UniversalTransformerForSeq2SeqLM",
    "UniversalTransformerForSequenceClassification",
    "UniversalTransformerLayer",
    "UniversalTransformerModel",
]
