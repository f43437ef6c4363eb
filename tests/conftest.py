import os
import sys
from pathlib import Path

# `python -m pytest` puts the repository root on sys.path, where our `kernels/` folder (installed as
# hf_seqplugins.kernels) would shadow the `kernels` distribution that transformers imports. Take the root off,
# here and in subprocesses, before anything imports transformers.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT]
os.environ["PYTHONSAFEPATH"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# Triton kernels run in the interpreter on CPU; this must be set before they are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_empty = torch.empty


def _nan_empty(*args, **kwargs):
    """torch.empty filled with NaN (or the max integer) so reads of unwritten memory show up in tests."""
    out = _empty(*args, **kwargs)
    if out.is_floating_point() or out.is_complex():
        out.fill_(float("nan"))
    return out


torch.empty = _nan_empty


@pytest.fixture(autouse=True)
def _gradients_stay_enabled():
    """Grad mode is global: a test that leaves it off (e.g. `with torch.no_grad()` around a `yield`) breaks later
    tests."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left gradients disabled")


def pytest_sessionstart(session):
    """A plugin that fails to load fails the run (the registry only warns, which would hide a missing architecture)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from hf_seqplugins.core.registry import PluginLoadWarning, load_plugins

        load_plugins()
    broken = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]
    if broken:
        pytest.exit("plugins failed to load:\n" + "\n".join(broken), returncode=3)
