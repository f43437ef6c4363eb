"""hf-seqplugins: recurrent, state-space and linear-attention sequence models for transformers.

Importing the package discovers every installed architecture plugin (entry-point group
``hf_seqplugins``) and registers it with `AutoConfig` and the Auto model classes.

The public extension API for plugin authors: `Architecture`, `hookimpl`, `SeqConfig`, `SeqModel`,
`SeqForCausalLM`, `SeqForSequenceClassification`, `read_state` / `write_state`, `Operator`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .backends import BackendUnavailableError, Operator, use_backend
from .cache import read_state, write_state
from .configuration import SeqConfig
from .export import export
from .hub import PushError, push_to_hub
from .modeling import SeqForCausalLM, SeqForSequenceClassification, SeqModel, SeqPreTrainedModel
from .registry import Architecture, DuplicateModelTypeError, PluginLoadWarning, hookimpl, load_plugins

__version__ = "0.1.0"

__all__ = [
    "Architecture",
    "ArchitectureInfo",
    "BackendUnavailableError",
    "DuplicateModelTypeError",
    "Operator",
    "PluginLoadWarning",
    "PushError",
    "SeqConfig",
    "SeqForCausalLM",
    "SeqForSequenceClassification",
    "SeqModel",
    "SeqPreTrainedModel",
    "available_architectures",
    "export",
    "hookimpl",
    "load_plugins",
    "push_to_hub",
    "read_state",
    "use_backend",
    "write_state",
]


@dataclass(frozen=True)
class ArchitectureInfo:
    """What an installed architecture provides: its classes, kernel backends and source distribution."""

    model_type: str
    config_class: type
    model_classes: dict[str, type]
    backends: dict[str, list[str]]
    distribution: str
    description: str


def available_architectures() -> dict[str, ArchitectureInfo]:
    """model_type -> `ArchitectureInfo` for every registered architecture.

    `backends` maps each operator the architecture runs to the backends that can run on this machine's CPU
    (`triton` appears where CUDA or the Triton interpreter is available).
    """
    return {
        model_type: ArchitectureInfo(
            model_type=model_type,
            config_class=arch.config_class,
            model_classes=dict(arch.model_classes),
            backends={op.name: op.available_backends() for op in arch.config_class.operators},
            distribution=arch.distribution,
            description=arch.description,
        )
        for model_type, arch in load_plugins().items()
    }


load_plugins()
