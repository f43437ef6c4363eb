"""Export a model as a folder that loads with `trust_remote_code=True` where hf_seqplugins is absent.

transformers copies only flat `.py` files next to `config.json`, found through flat relative imports
(`from .x import y`). The exporter therefore gathers every module that the model's classes import
from this package and from the plugin's own package (the plugin, the core pieces and the kernels),
writes each as one flat file named after its dotted path (`hf_seqplugins.kernels.rnn.cells` ->
`seqp_kernels_rnn_cells.py`), and rewrites the imports between them into flat relative ones (names
imported from a package's `__init__` are imported from the module that defines them). `config.json` gets an `auto_map` for every Auto
class the architecture supports, so the same folder also loads natively when the plugin is installed.

Optional dependencies stay optional in the copy: imports that may be missing (Triton, peer libraries,
this package itself) sit in `try` blocks, which transformers' dependency check skips and the exporter
leaves untouched.

The flat texts are computed once per process and reused by every later save (each Trainer checkpoint
calls `write_remote_code`): the cache is keyed on the classes' modules and checked against the path,
mtime and size of every source file it read, so editing one of them recomputes it.
"""
from __future__ import annotations

import ast
import importlib
import json
import os
import sys
import types
from pathlib import Path

from transformers import PreTrainedModel

from .model_card import render_model_card
from ..core.registry import load_plugins

PACKAGE = "hf_seqplugins"
FLAT_PREFIX = "seqp_"


def flat_name(module: str) -> str:
    """`hf_seqplugins.kernels.rnn.cells` -> `seqp_kernels_rnn_cells`; a plugin's `pkg.modeling` -> `pkg_modeling`."""
    if module.startswith(PACKAGE + "."):
        return FLAT_PREFIX + module[len(PACKAGE) + 1 :].replace(".", "_")
    return module.replace(".", "_")


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    base = package_parts[: len(package_parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _nodes_outside_try(node: ast.AST):
    """Every node below `node` except inside `try` blocks, which (as in transformers' own check) hold
    optional imports: they are left as they are and not followed."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.Try):
            yield child
            yield from _nodes_outside_try(child)


def _is_exported(module: str, packages: set[str]) -> bool:
    return module.split(".")[0] in packages


def _defining_module(package: str, name: str) -> str:
    """The module to import `name` from instead of `package`'s `__init__` (e.g. `hf_seqplugins.SeqModel`):
    the one defining it, or the package itself for plain values (its `__init__` is exported too, except
    this package's top level, which loads the plugin registry)."""
    value = getattr(importlib.import_module(package), name)
    if isinstance(value, types.ModuleType):
        return value.__name__
    if isinstance(value, (type, types.FunctionType)):  # an instance's __module__ would name its class's module
        return value.__module__
    if package == PACKAGE:  # a plain value of the public API (e.g. AUTO): the framework module holding that object
        for module_name, module in sorted(sys.modules.items()):
            if module_name.startswith(PACKAGE + ".core.") and getattr(module, name, None) is value:
                return module_name
        raise ValueError(f"cannot tell which module defines {package}.{name}; import it from its module")
    return package


def _package_imports(module: str, packages: set[str]) -> list[tuple[ast.ImportFrom, list[tuple[str, ast.alias]]]]:
    """The `from ... import` statements of `module` into `packages`, each with (defining module, alias) per name."""
    loaded = importlib.import_module(module)
    is_package = hasattr(loaded, "__path__")
    tree = ast.parse(Path(loaded.__file__).read_text())
    found = []
    for node in _nodes_outside_try(tree):
        if isinstance(node, ast.Import) and any(_is_exported(alias.name, packages) for alias in node.names):
            raise ValueError(f"{module}: write `from x import name` instead of `import x` for {packages} so it can be exported")
        if isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, is_package)
            if target and _is_exported(target, packages):
                is_init = hasattr(importlib.import_module(target), "__path__")
                names = [(_defining_module(target, a.name) if is_init else target, a) for a in node.names]
                found.append((node, names))
    return found


def collect_modules(classes: list[type]) -> list[str]:
    """Every module of this package and of the classes' own packages reachable by imports from `classes`."""
    packages = {PACKAGE} | {cls.__module__.split(".")[0] for cls in classes}
    pending = [cls.__module__ for cls in classes]
    seen: list[str] = []
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.append(module)
        pending.extend(target for _, names in _package_imports(module, packages) for target, _ in names)
    return sorted(seen)


def flatten_source(module: str, packages: set[str]) -> str:
    """The source of `module` with its imports of `packages` rewritten as flat relative imports."""
    loaded = importlib.import_module(module)
    lines = Path(loaded.__file__).read_text().splitlines(keepends=True)
    for node, names in sorted(_package_imports(module, packages), key=lambda item: -item[0].lineno):
        indent = " " * node.col_offset
        by_module: dict[str, list[str]] = {}
        for target, alias in names:
            by_module.setdefault(target, []).append(alias.name + (f" as {alias.asname}" if alias.asname else ""))
        statements = [f"{indent}from .{flat_name(target)} import {', '.join(aliases)}\n" for target, aliases in by_module.items()]
        lines[node.lineno - 1 : node.end_lineno] = statements
    return "".join(lines)


# (modules of the classes) -> (path, mtime_ns, size) of every flattened source file, {file name: flat text}
_FLAT_CACHE: dict[tuple[str, ...], tuple[tuple[tuple[str, int, int], ...], dict[str, str]]] = {}


def _fingerprint(paths) -> tuple[tuple[str, int, int], ...]:
    return tuple((path, stat.st_mtime_ns, stat.st_size) for path in paths for stat in [os.stat(path)])


def flat_sources(classes: list[type]) -> dict[str, str]:
    """`{file name: text}` of the flat modules for `classes` (`collect_modules`, each through `flatten_source`).

    Computed once per process and reused while every source file it read keeps its path, mtime and size."""
    key = tuple(sorted({cls.__module__ for cls in classes}))
    cached = _FLAT_CACHE.get(key)
    if cached is not None:
        fingerprint, files = cached
        try:
            if _fingerprint(path for path, _, _ in fingerprint) == fingerprint:
                return dict(files)
        except OSError:  # a source file went away: recompute, which reports it as before
            pass
    packages = {PACKAGE} | {cls.__module__.split(".")[0] for cls in classes}
    modules = collect_modules(classes)
    # Taken before the texts are read, so an edit landing while they are read invalidates the entry.
    fingerprint = _fingerprint(importlib.import_module(module).__file__ for module in modules)
    files = {f"{flat_name(module)}.py": flatten_source(module, packages) for module in modules}
    _FLAT_CACHE[key] = (fingerprint, files)
    return dict(files)


def write_remote_code(model: PreTrainedModel, out_dir: str | Path) -> dict[str, str]:
    """Write the flat modules next to the saved config and return the `auto_map` written into config.json."""
    out_dir = Path(out_dir)
    architecture = load_plugins().get(model.config.model_type)
    if architecture is None:
        raise ValueError(f"model_type {model.config.model_type!r} is not a registered hf_seqplugins architecture")
    classes = [architecture.config_class, *architecture.model_classes.values()]
    for name, text in flat_sources(classes).items():
        (out_dir / name).write_text(text)
    auto_map = {"AutoConfig": f"{flat_name(architecture.config_class.__module__)}.{architecture.config_class.__name__}"}
    for auto_name, cls in architecture.model_classes.items():
        auto_map[auto_name] = f"{flat_name(cls.__module__)}.{cls.__name__}"
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = auto_map
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return auto_map


def export(model: PreTrainedModel, out_dir: str | Path, repo_id: str | None = None, tokenizer=None, **card_fields) -> Path:
    """Save `model` (safetensors weights, config, self-contained remote code), its `tokenizer` if given, and a model card.

    The folder loads with `AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)` (and the
    other Auto classes the architecture supports) in an environment with only torch and transformers.
    `repo_id` and `card_fields` (license, datasets, results, training) go to `render_model_card`.
    """
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)  # writes the remote code too (SeqPreTrainedModel.save_pretrained)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    render_model_card(model, repo_id=repo_id, **card_fields).save(out_dir / "README.md")
    return out_dir
