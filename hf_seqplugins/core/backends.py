"""Kernel backends: one operator, several implementations of the same function, and the contract they share.

Every sequence operator (`hf_seqplugins.kernels.<op>`) is an :class:`Operator` with a `reference`
backend (the plain recurrence), a fast `torch` backend, usually a `triton` one, and optionally a
peer library's. Backends are imported lazily, on first use. `docs/operators.md` explains the contract;
`hf_seqplugins.testing.operators` checks any operator against it.

Which backend runs, first match wins:

1. the :func:`use_backend` context manager (``with use_backend("reference"): ...``);
2. the environment variable ``HF_SEQPLUGINS_BACKEND`` (``"torch"``, or per operator
   ``"headwise_rnn:reference,mlstm:torch"``);
3. the caller's request, normally ``config.kernel_backend`` (the same forms, or a dict operator -> backend);
4. ``"auto"``: `triton` for CUDA tensors when Triton imports, else `torch`; either is passed over for inputs it
   refuses (its `input_checks`), down to `reference`, which computes everything.

An explicit choice that cannot run here is an error that says why, never a silent fallback.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from .sequences import compute_dtype, run_by_segments

ENV_VAR = "HF_SEQPLUGINS_BACKEND"
AUTO = "auto"
DEFAULT = "*"
OPERATORS: dict[str, Operator] = {}
_override: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("hf_seqplugins_backend", default=None)

__all__ = [
    "AUTO",
    "BackendUnavailableError",
    "Operator",
    "backend_choices",
    "compute_dtype",
    "module_unavailable_reason",
    "triton_device_reason",
    "triton_unavailable_reason",
    "use_backend",
]


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run in this environment or on these inputs."""


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when Triton kernels can run on `device`, else the reason they cannot."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install 'hf-seqplugins[triton]')"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return (
            f"Triton kernels need CUDA tensors (got {device.type}); "
            "set TRITON_INTERPRET=1 to run them interpreted on CPU"
        )
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
            return (
                f"compute capability {capability[0]}.{capability[1]} is below 8.0; the kernels are only built "
                "and checked for sm_80 and sm_90; use backend 'torch'"
            )
        return None
    if device.type == "cpu":
        if not interpreted:
            return (
                f"the Triton kernels were defined for CUDA (TRITON_INTERPRET was not 1 when {module} was first "
                "imported); set it before that import to run on CPU"
            )
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
    """A sequence operator and its backends, under one contract (`docs/operators.md`).

    - **Layout.** Every per-token input named in `sequences` is `[B, T, ...]` (batch first, time second), and
      so is the output; the state (`state`: the name of the initial-state argument) is a tensor `[B, ...]` or a
      tuple of them, None meaning zeros. A call returns ``(y [B, T, ...], final_state)``: every backend returns
      the final state, so a prefill can hand it to decoding.
    - **Padding.** `mask` `[B, T]` bool (False = padding) makes those steps identities: the state passes
      unchanged and the padded inputs are never read; the output there is unspecified.
    - **Boundaries.** ``resets=`` `[B, T]` bool (True = a new sequence starts) zeroes the state before those
      steps (`resets[:, 0]` is ignored: the state before the first token is `initial_state`). Backends named
      in `native_resets` take ``resets=`` themselves; for the others the operator runs every packed sequence
      in a row of its own (`hf_seqplugins.core.sequences.Segments`), which is exact for any backend.
    - **Decoding.** A call with T = 1 runs the `step` backend (default: `reference`, a single loop step),
      whatever backend was asked for: mixers call the operator the same way in prefill and decoding.
    - **Dtypes.** States and gates are computed in `compute_dtype(input dtype)` (at least float32).

    `backends` maps a backend name to a loader: a function that imports and returns the kernel on first use
    (so optional dependencies load only when chosen, and relative imports keep working when the source is
    copied elsewhere, e.g. into exported remote code). `validate(*args, **kwargs)` checks the public
    arguments once and returns what every backend receives, ``(args, kwargs)``. `result(output, arguments)`
    turns a backend's output into the public one (layout back, dtype cast), given the public arguments by
    name. `requirements` maps a backend name to a check returning None when it can run on a device, else the
    reason; `input_checks` maps a backend name to a check of the validated inputs (None when it computes
    them, else the reason): "auto" then passes over that backend, an explicit request is refused with it.
    `examples` maps a case name to a factory ``(batch, length, dtype, generator) -> dict`` of random valid
    public arguments (the operator conformance kit runs every case).
    """

    name: str
    backends: dict[str, Callable[[], Callable]]
    validate: Callable[..., tuple[tuple, dict]]
    sequences: tuple[str, ...]
    state: str = "initial_state"
    mask: str = "mask"
    step: str = "reference"
    native_resets: frozenset[str] = frozenset()
    result: Callable[[tuple, dict], tuple] | None = None
    requirements: dict[str, Callable[[torch.device], str | None]] = field(default_factory=dict)
    input_checks: dict[str, Callable[..., str | None]] = field(default_factory=dict)
    examples: dict[str, Callable[..., dict]] = field(default_factory=dict)
    _loaded: dict[str, Callable] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for required in ("reference", "torch"):
            if required not in self.backends:
                raise ValueError(f"operator {self.name!r} must provide a {required!r} backend")
        self._signature = inspect.signature(self.validate)
        named = [*self.sequences, self.state, self.mask]
        missing = [n for n in named if n not in self._signature.parameters]
        if missing or not self.sequences:
            raise ValueError(
                f"operator {self.name!r}: validate must take the declared sequences {list(self.sequences)}, "
                f"state {self.state!r} and mask {self.mask!r}; missing {missing or 'a sequence'}"
            )
        unknown = [b for b in (self.step, *self.native_resets) if b not in self.backends]
        if unknown:
            raise ValueError(f"operator {self.name!r}: step / native_resets name unknown backends {unknown}")
        OPERATORS[self.name] = self

    @property
    def parameters(self) -> tuple[str, ...]:
        """The names of the operator's public arguments (those of `validate`)."""
        return tuple(self._signature.parameters)

    def unavailable_reason(self, backend: str, device: torch.device) -> str | None:
        if backend not in self.backends:
            return (
                f"unknown backend {backend!r} for operator {self.name!r}; choose from {sorted(self.backends)} or 'auto'"
            )
        check = self.requirements.get(backend)
        return None if check is None else check(device)

    def available_backends(self, device: torch.device | str = "cpu") -> list[str]:
        device = torch.device(device)
        return [name for name in self.backends if self.unavailable_reason(name, device) is None]

    def choice(self, requested: str | Mapping[str, str] | None) -> str:
        """The backend name asked for this operator (overrides, environment, then `requested`), or "auto"."""
        overrides = _override.get() or {}
        environment = backend_choices(os.environ.get(ENV_VAR, ""))
        for choices in (overrides, environment, backend_choices(requested)):
            name = choices.get(self.name) or choices.get(DEFAULT)
            if name:
                return name
        return AUTO

    def resolve(
        self,
        requested: str | Mapping[str, str] | None,
        device: torch.device,
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> str:
        """The backend that runs for a request (None or "auto" for automatic) on `device`.

        With the (validated) inputs given, backends that refuse them are passed over by "auto" and
        refused with their reason when requested explicitly.
        """
        choice = self.choice(requested)
        inputs = None if not args and not kwargs else (args, kwargs or {})
        if choice == AUTO:
            candidates = ("triton", "torch") if device.type == "cuda" and "triton" in self.backends else ("torch",)
            return next((name for name in candidates if self._refusal(name, device, inputs) is None), "reference")
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

    def arguments(self, args: tuple, kwargs: dict) -> dict:
        """The public arguments by name (defaults filled in); a wrong call is a TypeError naming the operator."""
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{self.name}: {error}") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def __call__(
        self, *args, backend: str | Mapping[str, str] | None = None, resets: torch.Tensor | None = None, **kwargs
    ):
        """Run the operator on public arguments; see the class docstring for `resets` and the T = 1 rule."""
        arguments = self.arguments(args, kwargs)
        args, kwargs = self.validate(**arguments)
        first = arguments[self.sequences[0]]
        if not isinstance(first, torch.Tensor) or first.dim() < 2:
            shape = list(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
            raise ValueError(f"{self.name}: {self.sequences[0]} must be a tensor [B, T, ...], got {shape}")
        name = self.backend_for(backend, first, args, kwargs)
        if resets is None:
            return self._finish(name, args, kwargs, arguments)
        resets = self._check_resets(resets, first)
        if name in self.native_resets:
            return self._finish(name, args, {**kwargs, "resets": resets}, arguments)

        def alone(*sequences, initial_state, mask):
            each = {**arguments, **dict(zip(self.sequences, sequences)), self.state: initial_state, self.mask: mask}
            return self(**each, backend=backend)

        return run_by_segments(
            alone, [arguments[n] for n in self.sequences], resets, arguments[self.mask], arguments[self.state]
        )

    def backend_for(self, requested, first: torch.Tensor, args: tuple, kwargs: dict) -> str:
        """The backend that runs validated inputs whose first sequence is `first`: `step` for one token, else
        `resolve`."""
        if first.shape[1] == 1:
            choice = self.choice(requested)
            if choice != AUTO and choice not in self.backends:
                raise BackendUnavailableError(self.unavailable_reason(choice, first.device))
            return self.step
        return self.resolve(requested, first.device, args, kwargs)

    def _finish(self, name: str, args: tuple, kwargs: dict, arguments: dict):
        output = self.implementation(name)(*args, **kwargs)
        return output if self.result is None else self.result(output, arguments)

    def _check_resets(self, resets: torch.Tensor, first: torch.Tensor) -> torch.Tensor | None:
        expected = tuple(first.shape[:2])
        if not isinstance(resets, torch.Tensor) or tuple(resets.shape) != expected:
            raise ValueError(
                f"{self.name}: resets must be [B, T] = {list(expected)}, "
                f"got {list(getattr(resets, 'shape', [type(resets).__name__]))}"
            )
        if resets.dtype != torch.bool:
            raise TypeError(f"{self.name}: resets must be bool (True where a sequence starts), got {resets.dtype}")
        resets = resets.to(first.device).clone()
        resets[:, 0] = False
        return resets


def backend_choices(value: str | Mapping[str, str] | None) -> dict[str, str]:
    """A backend request as ``{operator or "*": backend}``: None or "" -> {}, "torch" -> {"*": "torch"},
    "mlstm:parallel,headwise_rnn:torch" (the environment variable's form) or a dict -> per operator."""
    if not value:
        return {}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    choices = {}
    for item in str(value).split(","):
        operator, sep, name = item.strip().partition(":")
        if sep:
            choices[operator.strip()] = name.strip()
        elif operator:
            choices[DEFAULT] = operator
    return choices


@contextlib.contextmanager
def use_backend(default: str | None = None, **per_operator: str) -> Iterator[None]:
    """Force backends inside a block: ``use_backend("reference")`` or ``use_backend(headwise_rnn="triton")``."""
    choices = dict(_override.get() or {})
    if default is not None:
        choices[DEFAULT] = default
    choices.update(per_operator)
    token = _override.set(choices)
    try:
        yield
    finally:
        _override.reset(token)
