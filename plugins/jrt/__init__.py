"""JRT-RNN (`docs/architectures/jrt.md`): prefix linear attention (an encoder read non-causally over the first
`enc_length` tokens plus causal Taylor linear attention), sliding-window attention and gated short
convolutions, trained with next-token loss on the decoder region and masked-LM loss on the prefix."""

from .collator import JRTDataCollator
from .configuration import JRTConfig
from .modeling import (
    BaseConv,
    JRTForCausalLM,
    JRTForSequenceClassification,
    JRTModel,
    PrefixLinearAttention,
    SlidingWindowAttention,
)

__all__ = [
    "BaseConv",
    "JRTConfig",
    "JRTDataCollator",
    "JRTForCausalLM",
    "JRTForSequenceClassification",
    "JRTModel",
    "PrefixLinearAttention",
    "SlidingWindowAttention",
]
