"""Linear recurrence operator: the solver inside ParaRNN's Newton iterations and its adjoint
(`docs/architectures/pararnn.md`).

`linear_scan(a, b, initial_state=None, mask=None, *, resets=None, backend=None) -> (states, final_state)`

Per channel, ``s_t = a_t s_{t-1} + b_t`` for t = 1..T from ``s_0 = initial_state`` (zeros when None), with

- diagonal transitions: `a`, `b` `[B, T, D]`, states `[B, D]`; or
- block-diagonal transitions (m x m blocks, e.g. m = 2 for an LSTM's `[c, h]`): `a` `[B, T, D, m, m]`,
  `b` `[B, T, D, m]`, states `[B, D, m]` (`a_t s` is a matrix-vector product per channel).

`mask` `[B, T]` bool (False = padding) holds the state there; `resets` `[B, T]` bool (True = a packed sequence
starts) zeroes it first. Returns every state `s_1..s_T` (b's shape) and the final state `s_T`. Half-precision
inputs are computed in float32 (long products of transitions lose everything in 8 mantissa bits); the results
come back in the compute dtype.

Backend contract (what `validate` hands every backend, positionally): ``(a, b, initial_state, blocks)`` with
a, b (and the initial state, if any) in one compute dtype and `blocks` a bool, padding folded in (a = identity,
b = 0: an exact identity step). Resets fold the same way (a = 0 zeroes the state), so every backend takes
them natively. A backend returns
``(states, final_state)``. Backends: "reference" (step loop), "torch" (log-depth Hillis-Steele doubling, the
default on CPU), "chunked" (work-efficient two-level scan in PyTorch, O(T) work: usually the fastest on a CPU),
"triton" (chunked scan kernel with `tl.associative_scan`).
"""

from __future__ import annotations

import torch

from hf_seqplugins import Operator, compute_dtype, triton_unavailable_reason

__all__ = ["OPERATOR", "compute_dtype", "linear_scan"]


def _validate(a, b, initial_state=None, mask=None):
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(
                f"linear_scan: {name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}"
            )
    if b.dim() not in (3, 4):
        raise ValueError(
            f"linear_scan: b must be [B, T, D] (diagonal) or [B, T, D, m] (blocks), got shape {list(b.shape)}"
        )
    blocks = b.dim() == 4
    expected = (*b.shape, b.shape[-1]) if blocks else tuple(b.shape)
    if tuple(a.shape) != expected:
        layout = "[B, T, D, m, m]" if blocks else "[B, T, D]"
        raise ValueError(
            f"linear_scan: a must be {layout} = {list(expected)} for b of shape {list(b.shape)}, got {list(a.shape)}"
        )
    if b.shape[1] == 0:
        raise ValueError("linear_scan: no time steps (T=0)")
    if a.device != b.device:
        raise ValueError(f"linear_scan: a is on {a.device}, b on {b.device}")
    dtype = compute_dtype(torch.promote_types(a.dtype, b.dtype))
    if initial_state is not None:
        shape = (b.shape[0], *b.shape[2:])
        if not isinstance(initial_state, torch.Tensor) or tuple(initial_state.shape) != shape:
            raise ValueError(
                f"linear_scan: initial_state must be {list(shape)}, "
                f"got {list(getattr(initial_state, 'shape', [type(initial_state).__name__]))}"
            )
        if initial_state.device != b.device:
            raise ValueError(f"linear_scan: initial_state is on {initial_state.device}, b on {b.device}")
        initial_state = initial_state.to(dtype)
    a, b = a.to(dtype), b.to(dtype)
    if mask is not None:
        keep = _per_token_flag("mask", mask, b)
        a = torch.where(_broadcast(keep, a), a, _identity(a, blocks))
        b = torch.where(_broadcast(keep, b), b, 0)
    return (a, b, initial_state, blocks), {}


def _per_token_flag(name: str, flag: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`flag` `[B, T]` bool, checked against `b`, on b's device."""
    if not isinstance(flag, torch.Tensor) or tuple(flag.shape) != tuple(b.shape[:2]):
        raise ValueError(
            f"linear_scan: {name} must be [B, T] = {list(b.shape[:2])}, "
            f"got {list(getattr(flag, 'shape', [type(flag).__name__]))}"
        )
    if flag.dtype != torch.bool:
        raise TypeError(f"linear_scan: {name} must be bool, got {flag.dtype}")
    return flag.to(b.device)


def _broadcast(flag: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return flag.view(*flag.shape, *[1] * (like.dim() - 2))


def _identity(a: torch.Tensor, blocks: bool) -> torch.Tensor:
    return (
        torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        if blocks
        else torch.ones((), dtype=a.dtype, device=a.device)
    )


def _load_reference():
    from .reference import linear_scan as kernel

    return kernel


def _load_torch():
    from .torch_impl import linear_scan as kernel

    return kernel


def _load_chunked():
    from .chunked_impl import linear_scan as kernel

    return kernel


def _load_triton():
    from .triton_impl import linear_scan as kernel

    return kernel


def _triton_input_check(*validated_args):
    from .triton_impl import unsupported_reason

    return unsupported_reason(*validated_args)


def _example(blocks: int):
    """A factory of random inputs: D = 3 channels, diagonal (`blocks` = 0) or m x m blocks, contracting transitions."""

    def example(batch: int, length: int, dtype: torch.dtype, generator: torch.Generator) -> dict:
        def randn(*shape, scale=1.0):
            return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)

        tail = (blocks,) if blocks else ()
        return {
            "a": randn(batch, length, 3, *tail, *tail, scale=0.5 / (blocks or 1)),
            "b": randn(batch, length, 3, *tail),
            "initial_state": randn(batch, 3, *tail),
        }

    return example


OPERATOR = Operator(
    name="linear_scan",
    backends={"reference": _load_reference, "torch": _load_torch, "chunked": _load_chunked, "triton": _load_triton},
    validate=_validate,
    sequences=("a", "b"),
    requirements={"triton": triton_unavailable_reason},
    input_checks={"triton": _triton_input_check},
    examples={"diagonal": _example(0), "blocks": _example(2)},
)


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    resets: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the linear recurrence over the sequence; see the module docstring. `backend`: None/"auto" or a name."""
    if resets is not None:
        starts = _per_token_flag("resets", resets, b).clone()
        starts[:, 0] = False  # the state before the first token is the initial state
        a = torch.where(_broadcast(starts, a), torch.zeros((), dtype=a.dtype, device=a.device), a)
    return OPERATOR(a, b, initial_state, mask, backend=backend)
