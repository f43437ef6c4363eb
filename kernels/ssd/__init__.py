"""SSD sequence operator (`docs/architectures/mamba2.md`): Mamba-2's state space dual, a scalar-decay linear
recurrence per head with a matrix state.

`ssd(x, dt, log_decay, B, C, initial_state=None, mask=None, *, resets=None, chunk_size=64, backend=None)
-> (y, final_state)`

Shapes (Bt batch, T time, H heads, P head dim, G groups, N state size):

- `x` `[Bt, T, H, P]`; `B`, `C` `[Bt, T, G, N]` with H % G == 0; one floating dtype for the three.
  Heads map to groups in contiguous blocks: head h reads group h // (H / G).
- `dt` `[Bt, T, H]`: the step sizes Δ, already softplus'ed and clamped by the caller.
- `log_decay` `[Bt, T, H]`: the per-step log decay a_t, normally Δ_t·A_h (plus log λ for the
  state-collapse mitigation, `docs/architectures/mamba2.md`, section 'State-collapse mitigations'); usually <= 0, but
  any real value is computed faithfully.
- `initial_state` `[Bt, H, P, N]` or None (zeros).
- `mask` `[Bt, T]` bool or None: False marks padding, where the state is carried over unchanged and
  y = 0 (nothing is read there: NaN in padded inputs stays out).
- `resets` `[Bt, T]` bool or None: True where a new sequence starts (the state is zeroed before that step).
- `chunk_size`: chunk length of the chunked backends (results do not depend on it).

Per head: `h_t = exp(a_t) h_{t-1} + dt_t · x_t ⊗ B_t`, `y_t = h_t C_t` (no D skip: the caller adds D·x).

Returns `y [Bt, T, H, P]` in x's dtype and the final state `[Bt, H, P, N]` in the compute dtype:
float32 for half-precision inputs (dt, log_decay, cumulative sums, exponentials and the state always
are), else x's dtype.

Backend contract (what `validate` hands every backend, positionally):
``(x, dt, log_decay, B, C, initial_state, mask, chunk_size)`` with

- `x`, `B`, `C` in the caller's dtype (possibly half precision: a backend upcasts or accumulates in
  float32 itself);
- `dt`, `log_decay` in the compute dtype;
- the mask folded in: x = B = C = 0, dt = 0 and log_decay = 0 at padded positions (an exact identity
  step with zero output, whatever garbage the caller left there);
- `initial_state` None (zeros; not materialised) or cast to the compute dtype;
- `mask` always None; `chunk_size` an int >= 1;
- for "reference" and "torch", ``resets=`` `[Bt, T]` bool or None: they fold it into log_decay (-inf there,
  so exp(a) = 0 drops the state exactly); the other backends get packed rows one sequence per row.

A backend returns `(y [Bt, T, H, P], final_state [Bt, H, P, N])`, y in the compute dtype or x's
dtype (the public function casts it to x's dtype), the state in the compute dtype. Backends:
"reference" (step loop), "torch" (chunked SSD, the default on CPU), "triton",
and "transformers" (peer: transformers' pure-torch `mamba2_chunk_scan`, float32 only).

A call with T = 1 (decoding) runs one reference step. `ssd_step(x, dt, log_decay, B, C, state)` is the same
step on per-token tensors without the time axis.
"""

from __future__ import annotations

import numbers

import torch

from hf_seqplugins import Operator, compute_dtype, triton_unavailable_reason

from .reference import step

__all__ = ["OPERATOR", "compute_dtype", "ssd", "ssd_step", "state_shape"]


def state_shape(batch: int, heads: int, head_dim: int, state_size: int) -> tuple[int, int, int, int]:
    """Shape of the state `[Bt, H, P, N]`."""
    return (batch, heads, head_dim, state_size)


def _check_tensors(name: str, named: dict[str, torch.Tensor], device: torch.device) -> None:
    for label, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {label} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: {label} must be floating point, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{name}: {label} is on {t.device}, x on {device}")


def _check_groups(name: str, x_dtype: torch.dtype, b: torch.Tensor, c: torch.Tensor, heads: int, rank: int) -> None:
    layout = "[Bt, T, G, N]" if rank == 4 else "[Bt, G, N]"
    if b.dim() != rank or tuple(c.shape) != tuple(b.shape):
        raise ValueError(f"{name}: B and C must both be {layout} of one shape, got {list(b.shape)} and {list(c.shape)}")
    if b.shape[-2] == 0 or heads % b.shape[-2]:
        raise ValueError(
            f"{name}: the number of heads H={heads} must be a multiple of the number of groups G={b.shape[-2]}"
        )
    if b.dtype != x_dtype or c.dtype != x_dtype:
        raise TypeError(f"{name}: x, B and C must share one dtype, got {x_dtype}, {b.dtype}, {c.dtype}")


def _check_state(
    name: str, state: torch.Tensor, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a tensor [Bt, H, P, N], got {type(state).__name__}")
    if tuple(state.shape) != shape:
        raise ValueError(f"{name} must be [Bt, H, P, N] = {list(shape)}, got {list(state.shape)}")
    if not state.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {state.dtype}")
    if state.device != device:
        raise ValueError(f"{name} is on {state.device}, x on {device}")
    return state.to(dtype)


def _validate(
    x: torch.Tensor,
    dt: torch.Tensor,
    log_decay: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int = 64,
):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"ssd: x must be a tensor, got {type(x).__name__}")
    _check_tensors("ssd", {"x": x, "dt": dt, "log_decay": log_decay, "B": B, "C": C}, x.device)
    if x.dim() != 4:
        raise ValueError(f"ssd: x must be [Bt, T, H, P], got shape {list(x.shape)}")
    batch, steps, heads, head_dim = x.shape
    if steps == 0:
        raise ValueError("ssd: x has no time steps (T=0)")
    for label, t in (("dt", dt), ("log_decay", log_decay)):
        if tuple(t.shape) != (batch, steps, heads):
            raise ValueError(f"ssd: {label} must be [Bt, T, H] = {[batch, steps, heads]}, got {list(t.shape)}")
    _check_groups("ssd", x.dtype, B, C, heads, rank=4)
    if tuple(B.shape[:2]) != (batch, steps):
        raise ValueError(f"ssd: B and C must be [Bt, T, G, N] with [Bt, T] = {[batch, steps]}, got {list(B.shape)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"ssd: chunk_size must be a positive int, got {chunk_size!r}")
    dtype = compute_dtype(x.dtype)
    dt, log_decay = dt.to(dtype), log_decay.to(dtype)
    if initial_state is not None:
        shape = state_shape(batch, heads, head_dim, B.shape[-1])
        initial_state = _check_state("ssd: initial_state", initial_state, shape, x.device, dtype)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch, steps):
            raise ValueError(
                f"ssd: mask must be [Bt, T] = {[batch, steps]}, "
                f"got {list(getattr(mask, 'shape', [type(mask).__name__]))}"
            )
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"ssd: mask must be bool (False = padding), got {mask.dtype}")
        keep = mask.to(device=x.device, dtype=torch.bool)[:, :, None]
        dt = torch.where(keep, dt, 0)
        log_decay = torch.where(keep, log_decay, 0)
        x, B, C = (torch.where(keep[..., None], t, 0) for t in (x, B, C))
    return (x, dt, log_decay, B, C, initial_state, None, int(chunk_size)), {}


def _load_reference():
    from .reference import ssd as kernel

    return kernel


def _load_torch():
    from .torch_impl import ssd as kernel

    return kernel


def _load_transformers():
    from .transformers_peer import ssd as kernel

    return kernel


def _load_triton():
    from .triton_impl import ssd as kernel

    return kernel


def _transformers_unavailable_reason(device: torch.device) -> str | None:
    from .transformers_peer import unavailable_reason

    return unavailable_reason()


def _transformers_input_check(*validated_args):
    from .transformers_peer import unsupported_reason

    return unsupported_reason(*validated_args)


def _triton_input_check(*validated_args):
    from .triton_impl import unsupported_reason

    return unsupported_reason(*validated_args)


def _example(batch: int, length: int, dtype: torch.dtype, generator: torch.Generator, groups: int = 2) -> dict:
    """Random inputs: H = 4 heads of P = 3 in `groups` groups, N = 5, decays in (-2, 0), a non-zero initial state."""
    heads, head_dim, state_size = 4, 3, 5

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    dt = torch.nn.functional.softplus(randn(batch, length, heads))
    return {
        "x": randn(batch, length, heads, head_dim),
        "dt": dt,
        "log_decay": -dt * torch.rand(heads, generator=generator, dtype=torch.float64).to(dtype) * 2,
        "B": randn(batch, length, groups, state_size),
        "C": randn(batch, length, groups, state_size),
        "initial_state": randn(batch, heads, head_dim, state_size),
    }


def _result(output: tuple, arguments: dict) -> tuple:
    y, state = output
    return y.to(arguments["x"].dtype), state


OPERATOR = Operator(
    name="ssd",
    backends={
        "reference": _load_reference,
        "torch": _load_torch,
        "triton": _load_triton,
        "transformers": _load_transformers,
    },
    validate=_validate,
    sequences=("x", "dt", "log_decay", "B", "C"),
    native_resets=frozenset({"reference", "torch"}),
    result=_result,
    requirements={"triton": triton_unavailable_reason, "transformers": _transformers_unavailable_reason},
    input_checks={"triton": _triton_input_check, "transformers": _transformers_input_check},
    examples={"groups": _example, "one_group": lambda *a: _example(*a, groups=1)},
)


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    log_decay: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    resets: torch.Tensor | None = None,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the SSD recurrence over a sequence; see the module docstring. `backend`: None/"auto" or a name."""
    return OPERATOR(x, dt, log_decay, B, C, initial_state, mask, chunk_size, backend=backend, resets=resets)


def ssd_step(
    x: torch.Tensor,
    dt: torch.Tensor,
    log_decay: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step for decoding: O(1) in the sequence length.

    x `[Bt, H, P]`, dt, log_decay `[Bt, H]`, B, C `[Bt, G, N]`, state `[Bt, H, P, N]` (None = zeros).
    Returns `(y [Bt, H, P] in x's dtype, new state in the compute dtype)`.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"ssd_step: x must be a tensor, got {type(x).__name__}")
    _check_tensors("ssd_step", {"x": x, "dt": dt, "log_decay": log_decay, "B": B, "C": C}, x.device)
    if x.dim() != 3:
        raise ValueError(f"ssd_step: x must be [Bt, H, P], got shape {list(x.shape)}")
    batch, heads, head_dim = x.shape
    for label, t in (("dt", dt), ("log_decay", log_decay)):
        if tuple(t.shape) != (batch, heads):
            raise ValueError(f"ssd_step: {label} must be [Bt, H] = {[batch, heads]}, got {list(t.shape)}")
    _check_groups("ssd_step", x.dtype, B, C, heads, rank=3)
    if B.shape[0] != batch:
        raise ValueError(f"ssd_step: B and C must be [Bt, G, N] with Bt = {batch}, got {list(B.shape)}")
    dtype = compute_dtype(x.dtype)
    shape = state_shape(batch, heads, head_dim, B.shape[-1])
    if state is None:
        state = x.new_zeros(shape, dtype=dtype)
    else:
        state = _check_state("ssd_step: state", state, shape, x.device, dtype)
    y, state = step(x.to(dtype), dt.to(dtype), log_decay.to(dtype), B.to(dtype), C.to(dtype), state)
    return y.to(x.dtype), state
