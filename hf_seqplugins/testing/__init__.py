"""Testing kit: tiny configs and the conformance suite every registered architecture must pass.

A third-party plugin runs the same suite on its architectures with a one-line test module::

    from hf_seqplugins.testing.conformance import *  # noqa: F401,F403

(restrict it to some model types with ``HF_SEQPLUGINS_CONFORMANCE=seqp_mine``).
"""

from __future__ import annotations

from transformers import AutoConfig

from ..core.registry import load_plugins


def tiny_config(model_type: str, **overrides):
    """A small, fast config of `model_type` (the plugin's `tiny_config` plus `overrides`)."""
    architectures = load_plugins()
    if model_type not in architectures:
        raise KeyError(f"unknown model_type {model_type!r}; registered: {sorted(architectures)}")
    return AutoConfig.for_model(model_type, **{**architectures[model_type].tiny_config, **overrides})
