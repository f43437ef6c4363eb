"""Per-operator benchmark cases: one module per operator, each with `cases(quick, device) -> list[Case]`.

A case runs the same computation (same inputs, same weights) through our backends and the peer libraries
installed here; the harness times each implementation and reports ratios to the case's first entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Case:
    """One shape of one operator. `implementations` map a label to a zero-argument forward returning a tensor
    that depends on `inputs` (the tensors that get gradients); `flops` counts the forward's multiply-adds x 2."""

    operator: str
    shape: str
    flops: float
    inputs: list[torch.Tensor]
    implementations: dict[str, Callable[[], torch.Tensor]]
