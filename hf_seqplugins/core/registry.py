"""Plugin discovery (pluggy over the `hf_seqplugins` entry-point group) and Auto-class registration.

A plugin is a module named by an entry point in the group ``hf_seqplugins``; it implements the hook
:meth:`PluginSpec.seqplugins_architectures` and returns :class:`Architecture` records. The built-in
architectures are declared the same way in this package's own `pyproject.toml`.

- A plugin that fails to import, or whose hook raises or returns something invalid, is skipped with
  a :class:`PluginLoadWarning` naming its distribution and the error; the others still load.
- Two plugins claiming one `model_type` raise :class:`DuplicateModelTypeError` naming both.
- ``HF_SEQPLUGINS_PLUGINS=name1,name2`` loads only those entry-point or distribution names.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

import pluggy

ENTRY_POINT_GROUP = "hf_seqplugins"
ALLOW_LIST_ENV_VAR = "HF_SEQPLUGINS_PLUGINS"
MODEL_TYPE_PREFIX = "seqp_"
# The plugin API (hookspecs, Architecture, the Seq* base classes, Operator) that plugins declare they target.
# It changes only when a plugin written for the previous version could break; such plugins are refused.
PLUGIN_API_VERSION = 1
AUTO_CLASSES = (
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForTimeSeriesPrediction",
    "AutoModelForSeq2SeqLM",
)

hookspec = pluggy.HookspecMarker(ENTRY_POINT_GROUP)
hookimpl = pluggy.HookimplMarker(ENTRY_POINT_GROUP)


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded and was skipped."""


class DuplicateModelTypeError(RuntimeError):
    """Two plugins registered the same `model_type`."""


@dataclass(frozen=True)
class Architecture:
    """What a plugin contributes for one `model_type`.

    Attributes:
        model_type: the config's `model_type`, starting with ``seqp_``.
        config_class: its `SeqConfig` subclass.
        model_classes: Auto-class name (one of `AUTO_CLASSES`) -> model class.
        api_version: the plugin API version the plugin was written for: write the number (e.g. ``1``),
            not `PLUGIN_API_VERSION`, so an incompatible installation can refuse it.
        tiny_config: overrides giving a small, fast config for tests and demos.
        tiny_variants: named overrides on top of `tiny_config` for settings that change what a block computes
            (another memory rule, a hybrid layout): the conformance suite and `hf-seqplugins check` run each as
            an extra case ``<model_type>+<name>``.
        description: one line for listings and model cards.
        model_card_template: path of a Jinja template for the model card's architecture section
            (rendered with `config`); default: `model_cards/<model_type>.md`, else `description`.
        trainer_callbacks: `transformers.TrainerCallback` classes the application adds to every `Trainer` it
            builds for this architecture (e.g. ParaRNN's Newton statistics in the training logs).
    """

    model_type: str
    config_class: type
    model_classes: dict[str, type]
    api_version: int = field(kw_only=True)
    tiny_config: dict = field(default_factory=dict)
    tiny_variants: dict[str, dict] = field(default_factory=dict)
    description: str = ""
    model_card_template: str | None = None
    trainer_callbacks: tuple[type, ...] = ()
    distribution: str = "unknown"


def standard_model_classes(module, prefix: str) -> dict[str, type]:
    """The Auto-class mapping of a module that names its classes `{prefix}Model`, `{prefix}ForCausalLM` and
    `{prefix}ForSequenceClassification` (e.g. ``standard_model_classes(modeling, "S4D")``)."""
    return {
        "AutoModel": getattr(module, f"{prefix}Model"),
        "AutoModelForCausalLM": getattr(module, f"{prefix}ForCausalLM"),
        "AutoModelForSequenceClassification": getattr(module, f"{prefix}ForSequenceClassification"),
    }


class PluginSpec:
    """The hooks a plugin module implements (decorate the functions with `hookimpl`)."""

    @hookspec
    def seqplugins_architectures(self) -> list[Architecture]:
        """Return the architectures this plugin provides."""


def _distribution_name(entry_point: EntryPoint) -> str:
    return entry_point.dist.name if entry_point.dist is not None else "unknown"


def _check(architecture: object) -> Architecture:
    if not isinstance(architecture, Architecture):
        raise TypeError(f"the hook returned {type(architecture).__name__}, expected hf_seqplugins.Architecture")
    if architecture.api_version != PLUGIN_API_VERSION:
        raise ValueError(
            f"{architecture.model_type!r} was written for hf_seqplugins plugin API version {architecture.api_version}, "
            f"this installation provides version {PLUGIN_API_VERSION}: install a release of the plugin or of "
            "hf-seqplugins that match"
        )
    if not architecture.model_type.startswith(MODEL_TYPE_PREFIX):
        raise ValueError(
            f"model_type {architecture.model_type!r} must start with {MODEL_TYPE_PREFIX!r} "
            "so it never collides with transformers' built-in model types"
        )
    if getattr(architecture.config_class, "model_type", None) != architecture.model_type:
        raise ValueError(f"{architecture.config_class.__name__}.model_type must equal {architecture.model_type!r}")
    unknown = set(architecture.model_classes) - set(AUTO_CLASSES)
    if unknown:
        raise ValueError(f"unknown Auto classes {sorted(unknown)}; supported: {list(AUTO_CLASSES)}")
    variants = architecture.tiny_variants
    if not isinstance(variants, dict) or not all(
        isinstance(name, str) and name.isidentifier() and isinstance(overrides, dict)
        for name, overrides in variants.items()
    ):
        raise ValueError(
            f"{architecture.model_type}: tiny_variants must map identifier names to dicts of config overrides, "
            f"got {variants!r}"
        )
    return architecture


def discover(entry_points_to_load: list[EntryPoint] | None = None) -> dict[str, Architecture]:
    """Load the plugins and collect their architectures by `model_type` (no global side effects)."""
    if entry_points_to_load is None:
        entry_points_to_load = list(entry_points(group=ENTRY_POINT_GROUP))
    allowed = {name.strip() for name in os.environ.get(ALLOW_LIST_ENV_VAR, "").split(",") if name.strip()}
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(PluginSpec)
    found: dict[str, Architecture] = {}
    seen_names: set[str] = set()
    for entry_point in entry_points_to_load:
        distribution = _distribution_name(entry_point)
        if allowed and entry_point.name not in allowed and distribution not in allowed:
            continue
        if entry_point.name in seen_names:
            continue
        seen_names.add(entry_point.name)
        try:
            module = entry_point.load()
            manager.register(module, name=entry_point.name)
            impls = [
                impl
                for impl in manager.hook.seqplugins_architectures.get_hookimpls()
                if impl.plugin_name == entry_point.name
            ]
            if not impls:
                raise TypeError("the module implements no `seqplugins_architectures` hook")
            architectures = [_check(a) for impl in impls for a in (impl.function() or [])]
        except Exception as error:  # a broken plugin must not take the others down
            warnings.warn(
                f"hf_seqplugins: skipped plugin {entry_point.name!r} ({entry_point.value}) from distribution "
                f"{distribution!r}: {type(error).__name__}: {error}",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        for architecture in architectures:
            previous = found.get(architecture.model_type)
            if previous is not None:
                raise DuplicateModelTypeError(
                    f"model_type {architecture.model_type!r} is claimed by both distribution "
                    f"{previous.distribution!r} and distribution {distribution!r}; uninstall one or restrict "
                    f"loading with {ALLOW_LIST_ENV_VAR}"
                )
            found[architecture.model_type] = Architecture(**{**architecture.__dict__, "distribution": distribution})
    return found


def register_with_transformers(architectures: dict[str, Architecture]) -> None:
    """Make `AutoConfig` and the Auto model classes know every architecture (idempotent)."""
    import transformers

    for architecture in architectures.values():
        transformers.AutoConfig.register(architecture.model_type, architecture.config_class, exist_ok=True)
        for auto_name, model_class in architecture.model_classes.items():
            getattr(transformers, auto_name).register(architecture.config_class, model_class, exist_ok=True)


_REGISTERED: dict[str, Architecture] | None = None


def load_plugins(reload: bool = False) -> dict[str, Architecture]:
    """Discover the installed plugins once and register them with transformers; returns them by model_type."""
    global _REGISTERED
    if _REGISTERED is None or reload:
        _REGISTERED = discover()
        register_with_transformers(_REGISTERED)
    return _REGISTERED
