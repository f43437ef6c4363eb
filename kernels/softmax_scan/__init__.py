"""Softmax-weighted prefix scan: attention with a fixed query as a recurrence (Aaren, `docs/architectures/aaren.md`).

`softmax_scan(scores, values, initial_state=None, mask=None, *, resets=None, chunk_size=64, backend=None)
-> (outputs, final_state)`

Per batch row and head, with scores s_i (a fixed query's logits against the keys: q·k_i / sqrt(d)) and values v_i,
the output at token k is the softmax-weighted mean of the values so far:

    o_k = sum_{i<=k} exp(s_i) v_i / sum_{i<=k} exp(s_i)

computed stably with the running maximum m_k = max_{i<=k} s_i, the normaliser c_k = sum exp(s_i - m_k) and the
accumulator a_k = sum exp(s_i - m_k) v_i: o_k = a_k / c_k.

Shapes (B batch, T time, H heads, D value size):

- `scores` `[B, T, H]`, `values` `[B, T, H, D]`, floating, one dtype;
- `initial_state` `(m [B, H], c [B, H], a [B, H, D])` or None (the empty prefix: c = 0, a = 0; m is then
  irrelevant and is set to -inf, so a zero tensor is an empty state too);
- `mask` `[B, T]` bool or None: False marks padding (the state is held, nothing is read there);
- `resets` `[B, T]` bool or None (keyword): True where a packed sequence starts (the prefix is emptied there);
- `chunk_size`: chunk length of the chunked backends (results do not depend on it).

Returns `outputs [B, T, H, D]` in the values' dtype and the final state in the compute dtype (at least float32:
maxima, exponentials and sums never run in half precision).

Backend contract (what `validate` hands every backend, positionally): ``(scores, values, initial_state, mask,
chunk_size)`` with scores and values in the compute dtype and zeroed at padding, the initial state a tuple in the
compute dtype with m = -inf where c = 0, `mask` `[B, T]` bool or None, `chunk_size` an int >= 1; "reference"
also takes ``resets=``. A backend returns `(outputs [B, T, H, D], (m, c, a))`; its outputs at padded steps are
unspecified. Backends: "reference" (the token loop), "torch" (a chunked two-level scan: within each chunk every
prefix weighs its tokens against its own running maximum, a masked chunk x chunk matrix, then one pass over the
chunks), "doubling" (the Hillis-Steele scan of the
associative (m, u, w) combine, log2(T) steps) and "triton" (the online-softmax loop as a kernel).
`softmax_scan_step(scores, values, state)` is one token, for decoding.
"""

from __future__ import annotations

import numbers

import torch

from hf_seqplugins import Operator, compute_dtype, triton_unavailable_reason

__all__ = ["OPERATOR", "empty_state", "softmax_scan", "softmax_scan_step", "state_shapes"]


def state_shapes(batch: int, heads: int, value_dim: int) -> list[tuple[int, ...]]:
    """Shapes of the state `(m, c, a)`."""
    return [(batch, heads), (batch, heads), (batch, heads, value_dim)]


def empty_state(batch: int, heads: int, value_dim: int, dtype=torch.float32, device=None):
    """The state of an empty prefix: m = -inf, c = 0, a = 0."""
    m = torch.full((batch, heads), -torch.inf, dtype=dtype, device=device)
    return (
        m,
        torch.zeros(batch, heads, dtype=dtype, device=device),
        torch.zeros(batch, heads, value_dim, dtype=dtype, device=device),
    )


def _check_state(name: str, state, shapes: list[tuple[int, ...]], device, dtype):
    if not isinstance(state, (tuple, list)) or len(state) != 3 or not all(isinstance(s, torch.Tensor) for s in state):
        raise TypeError(f"{name} must be a tuple of 3 tensors (m, c, a), got {type(state).__name__}")
    got = [tuple(s.shape) for s in state]
    if got != shapes:
        raise ValueError(f"{name} (m, c, a) must have shapes {shapes}, got {got}")
    if not all(s.is_floating_point() for s in state):
        raise TypeError(f"{name} must be floating point, got {[s.dtype for s in state]}")
    m, c, a = (s.to(device=device, dtype=dtype) for s in state)
    return torch.where(c == 0, -torch.inf, m), c, a


def _validate(scores, values, initial_state=None, mask=None, chunk_size: int = 64):
    for label, t in (("scores", scores), ("values", values)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(
                f"softmax_scan: {label} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}"
            )
    if scores.dim() != 3:
        raise ValueError(f"softmax_scan: scores must be [B, T, H], got shape {list(scores.shape)}")
    batch, steps, heads = scores.shape
    if steps == 0:
        raise ValueError("softmax_scan: no time steps (T=0)")
    if values.dim() != 4 or tuple(values.shape[:3]) != (batch, steps, heads):
        raise ValueError(
            f"softmax_scan: values must be [B, T, H, D] with [B, T, H] = {[batch, steps, heads]}, "
            f"got {list(values.shape)}"
        )
    if values.device != scores.device:
        raise ValueError(f"softmax_scan: values are on {values.device}, scores on {scores.device}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"softmax_scan: chunk_size must be a positive int, got {chunk_size!r}")
    dtype = compute_dtype(torch.promote_types(scores.dtype, values.dtype))
    scores, values = scores.to(dtype), values.to(dtype)
    shapes = state_shapes(batch, heads, values.shape[-1])
    if initial_state is None:
        initial_state = empty_state(batch, heads, values.shape[-1], dtype, scores.device)
    else:
        initial_state = _check_state("softmax_scan: initial_state", initial_state, shapes, scores.device, dtype)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch, steps):
            raise ValueError(
                f"softmax_scan: mask must be [B, T] = {[batch, steps]}, "
                f"got {list(getattr(mask, 'shape', [type(mask).__name__]))}"
            )
        if mask.dtype != torch.bool:
            raise TypeError(f"softmax_scan: mask must be bool (False = padding), got {mask.dtype}")
        mask = mask.to(scores.device)
        scores = torch.where(mask[..., None], scores, 0)
        values = torch.where(mask[..., None, None], values, 0)
    return (scores, values, initial_state, mask, int(chunk_size)), {}


def _load_reference():
    from .reference import softmax_scan as kernel

    return kernel


def _load_torch():
    from .torch_impl import softmax_scan as kernel

    return kernel


def _load_doubling():
    from .torch_impl import softmax_scan_doubling as kernel

    return kernel


def _load_triton():
    from .triton_impl import softmax_scan as kernel

    return kernel


def _triton_input_check(*validated_args):
    from .triton_impl import unsupported_reason

    return unsupported_reason(*validated_args)


def _example(scale: float):
    """A factory of random inputs: H = 2 heads, D = 3, scores ~ N(0, scale^2), a non-empty initial state."""

    def example(batch: int, length: int, dtype: torch.dtype, generator: torch.Generator) -> dict:
        def randn(*shape):
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        return {
            "scores": (scale * randn(batch, length, 2)).to(dtype),
            "values": randn(batch, length, 2, 3).to(dtype),
            "initial_state": (randn(batch, 2), randn(batch, 2).abs() + 0.5, randn(batch, 2, 3)),
        }

    return example


def _result(output: tuple, arguments: dict) -> tuple:
    outputs, state = output
    return outputs.to(arguments["values"].dtype), state


OPERATOR = Operator(
    name="softmax_scan",
    backends={"reference": _load_reference, "torch": _load_torch, "doubling": _load_doubling, "triton": _load_triton},
    validate=_validate,
    sequences=("scores", "values"),
    native_resets=frozenset({"reference"}),
    result=_result,
    requirements={"triton": triton_unavailable_reason},
    input_checks={"triton": _triton_input_check},
    examples={"unit_scores": _example(1.0), "large_scores": _example(5.0)},
)


def softmax_scan(
    scores: torch.Tensor,
    values: torch.Tensor,
    initial_state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
    *,
    resets: torch.Tensor | None = None,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run the softmax-weighted prefix scan; see the module docstring. `backend`: None/"auto" or a name."""
    return OPERATOR(scores, values, initial_state, mask, chunk_size, backend=backend, resets=resets)


def softmax_scan_step(scores: torch.Tensor, values: torch.Tensor, state) -> tuple[torch.Tensor, tuple]:
    """One token for decoding: scores `[B, H]`, values `[B, H, D]`, state `(m, c, a)` or None (empty).
    Returns `(output [B, H, D] in the values' dtype, new state in the compute dtype)`."""
    outputs, state = OPERATOR(scores[:, None], values[:, None], state)
    return outputs[:, 0], state
