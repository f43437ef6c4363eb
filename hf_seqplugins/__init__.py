"""hf-seqplugins: recurrent, state-space and linear-attention sequence models for transformers.

Importing the package discovers every installed architecture plugin (entry-point group
``hf_seqplugins``) and registers it with `AutoConfig` and the Auto model classes.

The names below are the public API. Plugins (ours in `plugins/` and third parties') import what they
need from ``hf_seqplugins`` itself, plus the operators they run from ``hf_seqplugins.kernels.<op>``;
`docs/writing-a-plugin.md` lists them. The package is in three parts that import downwards only:
`core` (the framework), `export` (publishing), `app` (command line and workflows).
"""

from __future__ import annotations

from dataclasses import dataclass

from .core.attention import CausalSelfAttention, SlidingWindowAttention
from .core.backends import (
    AUTO,
    BackendUnavailableError,
    Operator,
    backend_choices,
    compute_dtype,
    module_unavailable_reason,
    triton_device_reason,
    triton_unavailable_reason,
    use_backend,
)
from .core.cache import read_state, write_state
from .core.cola import (
    ChainSearchResult,
    CoLaSearch,
    CoLaSummary,
    CorrectnessReward,
    apply_recorded_chain,
    current_chain,
    identity_chain,
    next_token_correct,
    remove_chain,
    save_chained,
    search_chain,
    summarize_searches,
    use_chain,
    with_chain,
)
from .core.configuration import SeqConfig, require_choice, require_positive_int
from .core.conversion import build_with_weights, load_complete, refuse
from .core.modeling import (
    GatedFeedForward,
    RMSNorm,
    SeqForCausalLM,
    SeqForSequenceClassification,
    SeqForTimeSeriesPrediction,
    SeqModel,
    SeqPreTrainedModel,
)
from .core.registry import (
    Architecture,
    DuplicateModelTypeError,
    PluginLoadWarning,
    hookimpl,
    load_plugins,
    standard_model_classes,
)
from .core.sequences import Segments, boundaries, run_by_segments
from .export import PushError, export, push_to_hub

__version__ = "0.1.0"

__all__ = [
    "AUTO",
    "Architecture",
    "ArchitectureInfo",
    "BackendUnavailableError",
    "CausalSelfAttention",
    "ChainSearchResult",
    "CoLaSearch",
    "CoLaSummary",
    "CorrectnessReward",
    "DuplicateModelTypeError",
    "GatedFeedForward",
    "Operator",
    "PluginLoadWarning",
    "PushError",
    "RMSNorm",
    "SeqConfig",
    "SeqForCausalLM",
    "SeqForSequenceClassification",
    "SeqForTimeSeriesPrediction",
    "SeqModel",
    "Segments",
    "SeqPreTrainedModel",
    "SlidingWindowAttention",
    "available_architectures",
    "boundaries",
    "backend_choices",
    "apply_recorded_chain",
    "compute_dtype",
    "current_chain",
    "build_with_weights",
    "export",
    "hookimpl",
    "identity_chain",
    "load_complete",
    "load_plugins",
    "module_unavailable_reason",
    "next_token_correct",
    "push_to_hub",
    "read_state",
    "refuse",
    "remove_chain",
    "require_choice",
    "require_positive_int",
    "run_by_segments",
    "save_chained",
    "search_chain",
    "standard_model_classes",
    "summarize_searches",
    "triton_device_reason",
    "triton_unavailable_reason",
    "use_backend",
    "use_chain",
    "with_chain",
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
