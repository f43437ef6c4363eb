"""Testing kit: tiny configs and the conformance suite every registered architecture must pass.

A third-party plugin runs the same suite on its architectures with a one-line test module::

    from hf_seqplugins.testing.conformance import *  # noqa: F401,F403

(restrict it to some model types with ``HF_SEQPLUGINS_CONFORMANCE=seqp_mine``).
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

from transformers import AutoConfig

from ..core.registry import load_plugins


def tiny_config(model_type: str, **overrides):
    """A small, fast config of `model_type` (the plugin's `tiny_config` plus `overrides`)."""
    architectures = load_plugins()
    if model_type not in architectures:
        raise KeyError(f"unknown model_type {model_type!r}; registered: {sorted(architectures)}")
    return AutoConfig.for_model(model_type, **{**architectures[model_type].tiny_config, **overrides})


def clean_environment(modules_cache) -> dict:
    """Environment for an interpreter started with ``python -S``: site-packages on PYTHONPATH but no ``.pth``
    hooks, so editable installs (this package, a plugin under development) are invisible while torch and
    transformers import, offline, with transformers' remote-code modules cached in `modules_cache`. Checks that an
    exported folder loads with ``trust_remote_code=True`` on a machine without the package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_SEQPLUGINS"))}
    env.update(
        PYTHONPATH=os.pathsep.join(site.getsitepackages()),
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(modules_cache),
    )
    return env


def run_without_package(script: str, *arguments: str, work_dir) -> str:
    """Runs Python source `script` (`arguments` as ``sys.argv[1:]``) in an interpreter that cannot import this
    package (`clean_environment`), in `work_dir` (created), and returns its stdout; raises AssertionError with the
    end of its stderr when it fails."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-S", "-c", script, *arguments],
        cwd=work_dir,
        env=clean_environment(work_dir / "modules"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"the script failed without the package:\n{done.stderr[-4000:]}")
    return done.stdout
