"""Linear time-invariant state-space operator: S4, S4D and LSSL layers (`docs/architectures/s4.md`).

`lti_ssm(u, system, initial_state=None, mask=None, *, return_final_state=True, backend=None) -> (y, final_state)`

H independent channels, each a linear SSM ``x_t = Ā x_{t-1} + B̄ u_t``, ``y_t = C x_t`` with M outputs
(no D skip: the caller adds D u). `system` is a discretised system from `systems` (it fixes H, M, the state
and the compute dtype):

- `DiagonalSystem` (S4D): diagonal complex Ā, state `[Bt, H, N/2]` complex;
- `DPLRSystem` (S4): diagonal plus low rank, state `[Bt, H, N]` complex (all modes);
- `DenseSystem` (LSSL): dense real Ā, state `[Bt, H, N]` real.

Shapes: `u [Bt, T, H]` floating; `initial_state` as above or None (zeros); `mask [Bt, T]` bool or None:
False marks padding, where the state is held and y = 0; `resets [Bt, T]` bool or None (keyword): True where
a packed sequence starts (each runs from a zero state). Returns `y [Bt, T, M, H]` in u's dtype and the final state (None
when `return_final_state=False`, which spares the closed-form state computation in training) in the system's
state dtype. Compute happens in the system's real dtype: build systems in float32 (complex64) or float64.

Backend contract (what `validate` hands every backend, positionally): ``(u, system, initial_state, mask,
return_final_state)`` with u cast to the system's real dtype and zeroed at padding, the initial state None
or cast to the state dtype. A backend returns `(y [Bt, T, M, H], final_state | None)`. Backends:

- "reference": the recurrence, step by step (the state held at padding, exactly);
- "torch": convolution mode: the SSM kernel (Vandermonde for S4D, Cauchy + Woodbury for S4, Krylov for
  LSSL) in plain PyTorch, an FFT convolution, the initial state's response and the final state in closed
  form; the default on CPU. A convolution runs the state through every step, so it takes padding only where
  the held state is zero or never read again: left padding without an initial state (what `generate` and
  packed rows send), trailing padding without the final state; "auto" passes other padded inputs to
  "reference";
- "triton": the same with the Vandermonde / Cauchy reductions as fused Triton kernels (LSSL's Krylov
  kernel is dense matmuls: no Triton kernel, "auto" passes over it).

Packed rows (`resets`) run one sequence per row (`hf_seqplugins.Segments`), left-padded, so the
convolution backends take them. A call with T = 1 runs one reference step; `lti_ssm_step(u, system, state)`
is the same step on `[Bt, H]` for O(1) decoding.
"""

from __future__ import annotations

import torch

from hf_seqplugins import Operator, compute_dtype, triton_unavailable_reason

from .systems import DenseSystem, DiagonalSystem, DPLRSystem, System, select_outputs

__all__ = [
    "OPERATOR",
    "DPLRSystem",
    "DenseSystem",
    "DiagonalSystem",
    "System",
    "lti_ssm",
    "lti_ssm_step",
    "select_outputs",
]

SYSTEMS = (DiagonalSystem, DenseSystem, DPLRSystem)


def _check_system(name: str, system) -> None:
    if not isinstance(system, SYSTEMS):
        raise TypeError(f"{name}: system must be one of {[s.__name__ for s in SYSTEMS]}, got {type(system).__name__}")


def _check_state(name: str, state, shape: tuple[int, ...], system, device: torch.device) -> torch.Tensor:
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a tensor {list(shape)}, got {type(state).__name__}")
    if tuple(state.shape) != shape:
        raise ValueError(f"{name} must be {list(shape)} for this {type(system).__name__}, got {list(state.shape)}")
    if state.device != device:
        raise ValueError(f"{name} is on {state.device}, u on {device}")
    return state.to(system.state_dtype)


def _real_dtype(system) -> torch.dtype:
    return torch.empty(0, dtype=system.state_dtype).real.dtype


def _validate(u, system, initial_state=None, mask=None, return_final_state=True):
    _check_system("lti_ssm", system)
    if not isinstance(u, torch.Tensor) or not u.is_floating_point():
        raise TypeError(
            f"lti_ssm: u must be a floating-point tensor [Bt, T, H], got {getattr(u, 'dtype', type(u).__name__)}"
        )
    if u.dim() != 3:
        raise ValueError(f"lti_ssm: u must be [Bt, T, H], got shape {list(u.shape)}")
    batch, steps, channels = u.shape
    if steps == 0:
        raise ValueError("lti_ssm: u has no time steps (T=0)")
    if channels != system.shape[1]:
        raise ValueError(f"lti_ssm: u has H={channels} channels, the system {system.shape[1]}")
    u = u.to(_real_dtype(system))
    if initial_state is not None:
        initial_state = _check_state(
            "lti_ssm: initial_state", initial_state, system.state_shape(batch), system, u.device
        )
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch, steps):
            raise ValueError(
                f"lti_ssm: mask must be [Bt, T] = {[batch, steps]}, "
                f"got {list(getattr(mask, 'shape', [type(mask).__name__]))}"
            )
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"lti_ssm: mask must be bool (False = padding), got {mask.dtype}")
        u = torch.where(mask.to(device=u.device, dtype=torch.bool)[..., None], u, 0)
        mask = mask.to(device=u.device, dtype=torch.bool)
    return (u, system, initial_state, mask, bool(return_final_state)), {}


def _load_reference():
    from .reference import lti_ssm as kernel

    return kernel


def _load_torch():
    from .torch_impl import lti_ssm as kernel

    return kernel


def _load_triton():
    from .triton_impl import lti_ssm as kernel

    return kernel


def _triton_unavailable_reason(device: torch.device) -> str | None:
    reason = triton_unavailable_reason(device)
    if reason is None:
        from .triton_impl import generator_unsupported_reason

        reason = generator_unsupported_reason(device)
    return reason


def _convolution_input_check(u, system, initial_state, mask, return_final_state) -> str | None:
    """A convolution runs the state through padding as zero inputs: exact where the held state is zero (padding
    before a row's first real token, without an initial state) or never read again (trailing padding, unless the
    final state is returned)."""
    if mask is None or bool(mask.all()):
        return None
    padding = ~mask
    real_before = (mask.cumsum(1) - mask.long()) > 0
    real_after = (mask.flip(1).cumsum(1) - mask.flip(1).long()).flip(1) > 0
    if bool((padding & real_before & real_after).any()):
        return "a convolution cannot hold the state through padding between real tokens; use backend 'reference'"
    if return_final_state and bool((padding & ~real_after & real_before).any()):
        return "a convolution cannot hold the final state through trailing padding; use backend 'reference'"
    if initial_state is not None and bool((padding & ~real_before).any()):
        return "a convolution cannot hold an initial state through left padding; use backend 'reference'"
    return None


def _triton_input_check(u, system, initial_state, mask, return_final_state) -> str | None:
    if isinstance(system, DenseSystem):
        return "LSSL's dense Krylov kernel is plain matrix products with no Triton kernel; use backend 'torch'"
    return _convolution_input_check(u, system, initial_state, mask, return_final_state)


def _example(kind: str):
    """A factory of random inputs with a random stable `kind` system (H = 3 channels, N = 4, M = 2 outputs)."""

    def example(batch: int, length: int, dtype: torch.dtype, generator: torch.Generator) -> dict:
        channels, modes, outputs = 3, 4, 2
        real = compute_dtype(dtype)
        complex_dtype = torch.complex128 if real == torch.float64 else torch.complex64

        def randn(*shape):
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        def crandn(*shape):
            return torch.complex(randn(*shape), randn(*shape)).to(complex_dtype)

        lam = torch.complex(
            -0.1 - 0.5 * torch.rand(channels, modes, generator=generator, dtype=torch.float64),
            3 * randn(channels, modes),
        ).to(complex_dtype)
        dt = (0.05 + 0.4 * torch.rand(channels, generator=generator, dtype=torch.float64)).to(real)
        if kind == "diagonal":
            system = DiagonalSystem(dt[:, None] * lam, crandn(channels, modes), crandn(outputs, channels, modes))
        elif kind == "dplr":
            system = DPLRSystem(
                lam,
                0.5 * crandn(1, channels, modes),
                crandn(channels, modes),
                crandn(outputs, channels, modes),
                dt,
                length,
            )
        else:
            system = DenseSystem(
                (0.3 * randn(channels, modes, modes)).to(real),
                randn(channels, modes).to(real),
                randn(outputs, channels, modes).to(real),
            )
        state = (
            randn(*system.state_shape(batch))
            if not system.state_dtype.is_complex
            else crandn(*system.state_shape(batch))
        )
        return {
            "u": randn(batch, length, channels).to(dtype),
            "system": system,
            "initial_state": state.to(system.state_dtype),
        }

    return example


def _result(output: tuple, arguments: dict) -> tuple:
    y, state = output
    mask = arguments["mask"]
    if mask is not None:
        y = torch.where(mask.to(device=y.device, dtype=torch.bool)[:, :, None, None], y, 0)
    return y.to(arguments["u"].dtype), state


OPERATOR = Operator(
    name="lti_ssm",
    backends={"reference": _load_reference, "torch": _load_torch, "triton": _load_triton},
    validate=_validate,
    sequences=("u",),
    result=_result,
    requirements={"triton": _triton_unavailable_reason},
    input_checks={"torch": _convolution_input_check, "triton": _triton_input_check},
    examples={kind: _example(kind) for kind in ("diagonal", "dplr", "dense")},
)


def lti_ssm(
    u: torch.Tensor,
    system: System,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    resets: torch.Tensor | None = None,
    return_final_state: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the system over a sequence; see the module docstring. `backend`: None/"auto" or a name."""
    return OPERATOR(u, system, initial_state, mask, return_final_state, backend=backend, resets=resets)


def lti_ssm_step(u: torch.Tensor, system: System, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step: u `[Bt, H]`, state as in the module docstring (None = zeros) -> (y `[Bt, M, H]` in
    u's dtype, new state). O(1) in the sequence length (S4 builds its dense Ā: pass `system.dense()` to reuse it)."""
    _check_system("lti_ssm_step", system)
    if not isinstance(u, torch.Tensor) or not u.is_floating_point() or u.dim() != 2:
        raise ValueError(
            f"lti_ssm_step: u must be a floating-point tensor [Bt, H], got {getattr(u, 'shape', type(u).__name__)}"
        )
    if u.shape[1] != system.shape[1]:
        raise ValueError(f"lti_ssm_step: u has H={u.shape[1]} channels, the system {system.shape[1]}")
    shape = system.state_shape(u.shape[0])
    if state is None:
        state = u.new_zeros(shape, dtype=system.state_dtype)
    else:
        state = _check_state("lti_ssm_step: state", state, shape, system, u.device)
    y, state = system.step(state, u.to(_real_dtype(system)))
    return y.to(u.dtype), state
