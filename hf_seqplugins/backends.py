"""Kernel backends: one operator, several implementations of the same function.

Every sequence operator (`hf_seqplugins.kernels.<op>`) is an :class:`Operator` with a `reference`
backend (the plain recurrence), a fast `torch` backend, usually a `triton` one, and optionally a
peer library's. Backends are imported lazily, on first use.

Which backend runs, first match wins:

1. the :func:`use_backend` context manager (``with use_backend("reference"): ...``);
2. the environment variable ``HF_SEQPLUGINS_BACKEND`` (``"torch"``, or per operator
   ``"headwise_rnn:reference,mlstm:torch"``);
3. the caller's request, normally ``config.kernel_backend``;
4. ``"auto"``: `triton` for CUDA tensors when Triton imports, else `torch`.

An explicit choice that cannot run here is an error that says why, never a silent fallback.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

ENV_VAR = "HF_SEQPLUGINS_BACKEND"
AUTO = "auto"
OPERATORS: dict[str, "Operator"] = {}
_override: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("hf_seqplugins_backend", default={})


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run in this environment or on these inputs."""


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when Triton kernels can run on `device`, else the reason they cannot."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install 'hf-seqplugins[triton]')"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"Triton kernels need CUDA tensors (got {device.type}); set TRITON_INTERPRET=1 to run them interpreted on CPU"
    return None


TRITON_MIN_CAPABILITY = (8, 0)


def triton_device_reason(device: torch.device, interpreted: bool, module: str) -> str | None:
    """Why the Triton kernels defined in `module` cannot run on `device`, or None. CUDA needs compute capability
    >= 8.0 (the kernels are built and checked for sm_80 and sm_90); a CPU needs Triton's interpreter, which
    `triton.jit` picks when the kernels are defined: `interpreted` is whether TRITON_INTERPRET was 1 when `module`
    was first imported."""
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < TRITON_MIN_CAPABILITY:
            return (f"compute capability {capability[0]}.{capability[1]} is below 8.0; the kernels are only built "
                    "and checked for sm_80 and sm_90; use backend 'torch'")
        return None
    if device.type == "cpu":
        if not interpreted:
            return (f"the Triton kernels were defined for CUDA (TRITON_INTERPRET was not 1 when {module} was first "
                    "imported); set it before that import to run on CPU")
        return None
    return f"Triton kernels run on CUDA devices (or interpreted on CPU), not on {device.type!r}"


def module_unavailable_reason(module: str) -> Callable[[torch.device], str | None]:
    """Availability check for a peer backend that only needs `module` importable."""

    def check(device: torch.device) -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"the peer library `{module}` is not installed (pip install 'hf-seqplugins[peers]')"
        return None

    return check


@dataclass
class Operator:
    """A sequence operator and its backends.

    `backends` maps a backend name to a loader: a function that imports and returns the kernel on
    first use (so optional dependencies load only when chosen, and relative imports keep working when
    the source is copied elsewhere, e.g. into exported remote code). `requirements` maps a backend name
    to a check returning None when it can run on a device, else the reason; `input_checks` maps a
    backend name to a check of the validated inputs (None when it computes them, else the reason):
    "auto" then passes over that backend, an explicit request is refused with the reason.
    `validate(*args, **kwargs)` checks the inputs once, before any backend runs, and returns the
    (possibly normalised) arguments as ``(args, kwargs)``.
    """

    name: str
    backends: dict[str, Callable[[], Callable]]
    requirements: dict[str, Callable[[torch.device], str | None]] = field(default_factory=dict)
    input_checks: dict[str, Callable[..., str | None]] = field(default_factory=dict)
    validate: Callable[..., tuple[tuple, dict]] | None = None
    _loaded: dict[str, Callable] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for required in ("reference", "torch"):
            if required not in self.backends:
                raise ValueError(f"operator {self.name!r} must provide a {required!r} backend")
        OPERATORS[self.name] = self

    def unavailable_reason(self, backend: str, device: torch.device) -> str | None:
        if backend not in self.backends:
            return f"unknown backend {backend!r} for operator {self.name!r}; choose from {sorted(self.backends)} or 'auto'"
        check = self.requirements.get(backend)
        return None if check is None else check(device)

    def available_backends(self, device: torch.device | str = "cpu") -> list[str]:
        device = torch.device(device)
        return [name for name in self.backends if self.unavailable_reason(name, device) is None]

    def resolve(self, requested: str | None, device: torch.device, args: tuple = (), kwargs: dict | None = None) -> str:
        """The backend that runs for a request (None or "auto" for automatic) on `device`.

        With the (validated) inputs given, backends that refuse them are passed over by "auto" and
        refused with their reason when requested explicitly.
        """
        choice = _override.get().get(self.name) or _override.get().get("*") or _env_choice(self.name) or requested or AUTO
        inputs = None if not args and not kwargs else (args, kwargs or {})
        if choice == AUTO:
            if device.type == "cuda" and "triton" in self.backends and self._refusal("triton", device, inputs) is None:
                return "triton"
            return "torch"
        reason = self._refusal(choice, device, inputs)
        if reason is not None:
            raise BackendUnavailableError(f"backend {choice!r} for {self.name!r} cannot run: {reason}")
        return choice

    def _refusal(self, backend: str, device: torch.device, inputs: tuple[tuple, dict] | None) -> str | None:
        reason = self.unavailable_reason(backend, device)
        if reason is None and inputs is not None and backend in self.input_checks:
            reason = self.input_checks[backend](*inputs[0], **inputs[1])
        return reason

    def implementation(self, backend: str) -> Callable:
        if backend not in self._loaded:
            self._loaded[backend] = self.backends[backend]()
        return self._loaded[backend]

    def __call__(self, *args, backend: str | None = None, **kwargs):
        if self.validate is not None:
            args, kwargs = self.validate(*args, **kwargs)
        device = next(a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        return self.implementation(self.resolve(backend, device, args, kwargs))(*args, **kwargs)


def _env_choice(operator: str) -> str | None:
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    default = None
    for item in value.split(","):
        op, sep, name = item.strip().partition(":")
        if not sep:
            default = op
        elif op == operator:
            return name
    return default


@contextlib.contextmanager
def use_backend(default: str | None = None, **per_operator: str) -> Iterator[None]:
    """Force backends inside a block: ``use_backend("reference")`` or ``use_backend(headwise_rnn="triton")``."""
    choices = dict(_override.get())
    if default is not None:
        choices["*"] = default
    choices.update(per_operator)
    token = _override.set(choices)
    try:
        yield
    finally:
        _override.reset(token)
