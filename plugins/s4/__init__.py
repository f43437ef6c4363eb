"""Structured state spaces (`docs/architectures/s4.md`): S4 (DPLR), S4D (diagonal) and LSSL (dense HiPPO)."""

from .configuration import LSSLConfig, S4Config, S4DConfig, StateSpaceConfig
from .modeling import (
    LSSLForCausalLM,
    LSSLForSequenceClassification,
    LSSLMixer,
    LSSLModel,
    S4DForCausalLM,
    S4DForSequenceClassification,
    S4DModel,
    S4ForCausalLM,
    S4ForSequenceClassification,
    S4Mixer,
    S4Model,
    StateSpaceMixer,
)

__all__ = [
    "LSSLConfig",
    "LSSLForCausalLM",
    "LSSLForSequenceClassification",
    "LSSLMixer",
    "LSSLModel",
    "S4Config",
    "S4DConfig",
    "S4DForCausalLM",
    "S4DForSequenceClassification",
    "S4DModel",
    "S4ForCausalLM",
    "S4ForSequenceClassification",
    "S4Mixer",
    "S4Model",
    "StateSpaceConfig",
    "StateSpaceMixer",
]
