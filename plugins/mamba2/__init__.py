"""Mamba-2 (SSD) with Stuffed Mamba's state-collapse options."""

from .configuration import Mamba2Config
from .modeling import Mamba2ForCausalLM, Mamba2ForSequenceClassification, Mamba2Mixer, Mamba2Model

__all__ = ["Mamba2Config", "Mamba2ForCausalLM", "Mamba2ForSequenceClassification", "Mamba2Mixer", "Mamba2Model"]
