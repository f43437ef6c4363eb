import os

import pytest
import torch

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
    """Grad mode is global: a test that leaves it off (e.g. `with torch.no_grad()` around a `yield`) breaks later tests."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left gradients disabled")
