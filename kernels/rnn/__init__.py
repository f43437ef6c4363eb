"""Head-wise (block-diagonal) nonlinear RNN operator: Elman, LSTM, GRU and sLSTM (`docs/architectures/rnn.md`).

`headwise_rnn(cell, gates_x, recurrent_weight, ...)` is functional in FlashRNN's style: the caller
supplies the input part of the gate pre-activations; the operator runs the recurrence.

Shapes (B batch, T time, G gates, NH heads, DH head size, DR = P with a projection else DH):

- `gates_x` `[B, T, G, NH, DH]`: input part of the pre-activations, input bias included.
- `recurrent_weight` `[G, NH, DH, DR]`: gate g of head n gets ``recurrent_weight[g, n] @ h[n]``.
- `recurrent_bias` `[G, NH, DH]` or None: added to the recurrent part (inside GRU's reset product).
- `initial_state`: tuple of the cell's states, h `[B, NH, DR]`, the others `[B, NH, DH]`; None = zeros.
- `mask` `[B, T]` bool or None: False marks padding, where the state is carried over unchanged.
- `resets` `[B, T]` bool or None (keyword): True where a packed sequence starts; the state is zeroed there.
- `projection` `[NH, P, DH]` or None (LSTM only): h = projection @ (o * tanh(c)).

Returns `(outputs [B, T, NH, DR], final_state)` with `final_state` shaped like `initial_state`.
Half-precision inputs are computed with float32 states and gate math, outputs cast back.
The "reference" and "torch" loops take `resets` themselves; "triton" and the "flashrnn" peer get one
sequence per row. A call with T = 1 runs one reference step.
"""

from __future__ import annotations

import torch

from hf_seqplugins import Operator, compute_dtype, module_unavailable_reason, triton_unavailable_reason

from .cells import CELLS, NUM_GATES, NUM_STATES

__all__ = ["CELLS", "NUM_GATES", "NUM_STATES", "OPERATOR", "headwise_rnn", "state_shapes"]


def state_shapes(cell: str, batch: int, heads: int, head_dim: int, proj_size: int = 0) -> list[tuple[int, ...]]:
    """Shapes of the state tuple of `cell`."""
    h_dim = proj_size or head_dim
    return [(batch, heads, h_dim)] + [(batch, heads, head_dim)] * (NUM_STATES[cell] - 1)


def _validate(
    cell: str,
    gates_x: torch.Tensor,
    recurrent_weight: torch.Tensor,
    recurrent_bias: torch.Tensor | None = None,
    initial_state: tuple[torch.Tensor, ...] | None = None,
    mask: torch.Tensor | None = None,
    projection: torch.Tensor | None = None,
    normalizer_clamp: bool = True,
):
    if cell not in CELLS:
        raise ValueError(f"headwise_rnn: unknown cell {cell!r}; expected one of {CELLS}")
    if gates_x.dim() != 5:
        raise ValueError(f"headwise_rnn: gates_x must be [B, T, G, NH, DH], got shape {tuple(gates_x.shape)}")
    if not gates_x.is_floating_point():
        raise TypeError(f"headwise_rnn: gates_x must be floating point, got {gates_x.dtype}")
    batch, steps, gates, heads, head_dim = gates_x.shape
    if steps == 0:
        raise ValueError("headwise_rnn: gates_x has no time steps (T=0)")
    if gates != NUM_GATES[cell]:
        raise ValueError(f"headwise_rnn: cell {cell!r} has {NUM_GATES[cell]} gates, gates_x has {gates}")
    if projection is not None and cell != "lstm":
        raise ValueError(f"headwise_rnn: a projection is only defined for the lstm cell, not {cell!r}")
    proj_size = 0 if projection is None else projection.shape[1]
    if projection is not None and tuple(projection.shape) != (heads, proj_size, head_dim):
        raise ValueError(
            f"headwise_rnn: projection must be [NH, P, DH] = [{heads}, P, {head_dim}], got {tuple(projection.shape)}"
        )
    expected = (gates, heads, head_dim, proj_size or head_dim)
    if tuple(recurrent_weight.shape) != expected:
        raise ValueError(
            f"headwise_rnn: recurrent_weight must be [G, NH, DH, DR] = {list(expected)}, "
            f"got {list(recurrent_weight.shape)}"
        )
    if recurrent_bias is not None and tuple(recurrent_bias.shape) != expected[:3]:
        raise ValueError(
            f"headwise_rnn: recurrent_bias must be [G, NH, DH] = {list(expected[:3])}, got {list(recurrent_bias.shape)}"
        )
    if mask is not None:
        if tuple(mask.shape) != tuple(gates_x.shape[:2]):
            raise ValueError(f"headwise_rnn: mask must be [B, T] = {list(gates_x.shape[:2])}, got {list(mask.shape)}")
        mask = mask.to(device=gates_x.device, dtype=torch.bool)
    dtype = compute_dtype(gates_x.dtype)
    shapes = state_shapes(cell, batch, heads, head_dim, proj_size)
    if initial_state is None:
        initial_state = tuple(gates_x.new_zeros(shape, dtype=dtype) for shape in shapes)
    else:
        initial_state = tuple(initial_state)
        got = [tuple(s.shape) for s in initial_state]
        if got != shapes:
            raise ValueError(
                f"headwise_rnn: initial_state for {cell!r} must be {len(shapes)} tensors of shapes {shapes}, got {got}"
            )
        initial_state = tuple(s.to(dtype) for s in initial_state)

    def cast(t):
        return None if t is None else t.to(dtype)

    args = (
        cell,
        cast(gates_x),
        cast(recurrent_weight),
        cast(recurrent_bias),
        initial_state,
        mask,
        cast(projection),
        normalizer_clamp,
    )
    return args, {}


def _load_reference():
    from .reference import headwise_rnn as kernel

    return kernel


def _load_torch():
    from .torch_impl import headwise_rnn as kernel

    return kernel


def _load_triton():
    from .triton_impl import headwise_rnn as kernel

    return kernel


def _load_flashrnn():
    from .flashrnn_peer import headwise_rnn as kernel

    return kernel


def _triton_input_check(*validated_args):
    from .triton_impl import unsupported_reason

    return unsupported_reason(*validated_args)


def _flashrnn_input_check(*validated_args):
    from .flashrnn_peer import unsupported_reason

    return unsupported_reason(*validated_args)


def _example(cell: str, projection: bool = False, bias: bool = True):
    """A factory of random inputs for `cell`: NH = 2 heads of DH = 3 (P = 2 with a projection), a non-zero state,
    a recurrent bias unless `bias` is False (the Triton kernel compiles a variant without)."""

    def example(batch: int, length: int, dtype: torch.dtype, generator: torch.Generator) -> dict:
        heads, head_dim, gates = 2, 3, NUM_GATES[cell]
        proj_size = 2 if projection else 0

        def randn(*shape, scale=1.0):
            return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)

        return {
            "cell": cell,
            "gates_x": randn(batch, length, gates, heads, head_dim),
            "recurrent_weight": randn(gates, heads, head_dim, proj_size or head_dim, scale=0.5),
            "recurrent_bias": randn(gates, heads, head_dim, scale=0.1) if bias else None,
            "initial_state": tuple(
                randn(*shape, scale=0.5).abs() + (1 if i == 2 and cell == "slstm" else 0)
                for i, shape in enumerate(state_shapes(cell, batch, heads, head_dim, proj_size))
            ),
            "projection": randn(heads, proj_size, head_dim, scale=0.5) if projection else None,
        }

    return example


def _result(output: tuple, arguments: dict) -> tuple:
    outputs, final_state = output
    return outputs.to(arguments["gates_x"].dtype), final_state


OPERATOR = Operator(
    name="headwise_rnn",
    backends={"reference": _load_reference, "torch": _load_torch, "triton": _load_triton, "flashrnn": _load_flashrnn},
    validate=_validate,
    sequences=("gates_x",),
    native_resets=frozenset({"reference", "torch"}),
    result=_result,
    requirements={"triton": triton_unavailable_reason, "flashrnn": module_unavailable_reason("flashrnn")},
    input_checks={"triton": _triton_input_check, "flashrnn": _flashrnn_input_check},
    examples={
        **{cell: _example(cell) for cell in CELLS},
        "lstm_projection": _example("lstm", projection=True),
        "gru_no_bias": _example("gru", bias=False),
    },
)


def headwise_rnn(
    cell: str,
    gates_x: torch.Tensor,
    recurrent_weight: torch.Tensor,
    recurrent_bias: torch.Tensor | None = None,
    initial_state: tuple[torch.Tensor, ...] | None = None,
    mask: torch.Tensor | None = None,
    projection: torch.Tensor | None = None,
    normalizer_clamp: bool = True,
    *,
    resets: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run the recurrence; see the module docstring for shapes. `backend`: None/"auto" or a name."""
    return OPERATOR(
        cell,
        gates_x,
        recurrent_weight,
        recurrent_bias,
        initial_state,
        mask,
        projection,
        normalizer_clamp,
        backend=backend,
        resets=resets,
    )
