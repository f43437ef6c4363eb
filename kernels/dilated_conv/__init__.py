"""A stack of causal dilated depthwise 1-D convolutions: the temporal convolution network of TCNCA
(`docs/architectures/tcnca.md`).

`dilated_conv(x, weight, initial_state=None, mask=None, dilation_factor=2, activation="none", *, resets=None,
backend=None) -> (y, final_state)`

Per channel c, with D layers of K taps, layer i dilated by f^i, y^(0) = x:

    y^(i+1)_{t,c} = sum_{j=0}^{K-1} w[i, c, j] * y^(i)_{t - j f^i, c}      (then GELU between layers, if asked)

and y = y^(D). The receptive field is R = 1 + (K - 1)(f^D - 1)/(f - 1) tokens (R = 1 + (K - 1) D for f = 1).

Shapes (B batch, T time, C channels):

- `x` `[B, T, C]` floating; `weight` `[D, C, K]` (K >= 2; tap j weighs the input j f^i steps back), same dtype;
- `initial_state`: a tuple of D windows, layer i's `[B, (K - 1) f^i, C]`: its last (K - 1) f^i inputs, oldest
  first (what a ring buffer of the layer holds), or None (zeros: nothing before the sequence);
- `mask` `[B, T]` bool or None: False marks padding (a step that holds every window; nothing is read there);
- `resets` `[B, T]` bool or None (keyword): True where a packed sequence starts (every window is zeroed);
- `dilation_factor` f: an int >= 1; `activation`: "none" or "gelu" (applied between layers, not after the last).

Returns `y [B, T, C]` in the input dtype and the D windows in the compute dtype (at least float32).

Backend contract (what `validate` hands every backend, positionally): ``(x, weight, initial_state, mask,
dilation_factor, activation)`` with x and weight in the compute dtype, x zeroed at padding, the state a tuple of D
tensors in the compute dtype, `mask` `[B, T]` bool or None; "reference" also takes ``resets=``. A backend returns
`(y [B, T, C], windows)`; its outputs at padded steps are unspecified. Backends: "reference" (the token loop
over all layers), "torch" (one `F.conv1d` per layer over its window and inputs), "triton" (one fused
convolution + GELU kernel per layer). `dilated_conv_step(x, weight, state, ...)` is one token, for decoding.
"""

from __future__ import annotations

import numbers

import torch

from hf_seqplugins import Operator, compute_dtype, triton_unavailable_reason

__all__ = ["ACTIVATIONS", "OPERATOR", "dilated_conv", "dilated_conv_step", "receptive_field", "state_shapes"]

ACTIVATIONS = ("none", "gelu")


def receptive_field(kernel_size: int, dilation_factor: int, depth: int) -> int:
    """R = 1 + (K - 1) * sum_{i<D} f^i: output t depends on inputs t - R + 1 .. t."""
    return 1 + (kernel_size - 1) * sum(dilation_factor**i for i in range(depth))


def state_shapes(batch: int, channels: int, kernel_size: int, dilation_factor: int, depth: int):
    """Shapes of the D windows of the state: layer i's `(B, (K - 1) f^i, C)`."""
    return [(batch, (kernel_size - 1) * dilation_factor**i, channels) for i in range(depth)]


def _validate(x, weight, initial_state=None, mask=None, dilation_factor: int = 2, activation: str = "none"):
    for label, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(
                f"dilated_conv: {label} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}"
            )
    if x.dim() != 3:
        raise ValueError(f"dilated_conv: x must be [B, T, C], got shape {list(x.shape)}")
    batch, steps, channels = x.shape
    if steps == 0:
        raise ValueError("dilated_conv: no time steps (T=0)")
    if weight.dim() != 3 or weight.shape[1] != channels or weight.shape[0] < 1 or weight.shape[2] < 2:
        raise ValueError(
            f"dilated_conv: weight must be [D, C, K] with C = {channels}, D >= 1 and K >= 2, got {list(weight.shape)}"
        )
    if weight.device != x.device:
        raise ValueError(f"dilated_conv: weight is on {weight.device}, x on {x.device}")
    if isinstance(dilation_factor, bool) or not isinstance(dilation_factor, numbers.Integral) or dilation_factor < 1:
        raise ValueError(f"dilated_conv: dilation_factor must be an int >= 1, got {dilation_factor!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"dilated_conv: activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    depth, _, taps = weight.shape
    dtype = compute_dtype(torch.promote_types(x.dtype, weight.dtype))
    x, weight = x.to(dtype), weight.to(dtype)
    shapes = state_shapes(batch, channels, taps, int(dilation_factor), depth)
    if initial_state is None:
        initial_state = tuple(torch.zeros(shape, dtype=dtype, device=x.device) for shape in shapes)
    else:
        if not isinstance(initial_state, (tuple, list)) or not all(isinstance(s, torch.Tensor) for s in initial_state):
            raise TypeError(
                f"dilated_conv: initial_state must be a tuple of {depth} tensors, got {type(initial_state).__name__}"
            )
        got = [tuple(s.shape) for s in initial_state]
        if got != shapes:
            raise ValueError(f"dilated_conv: initial_state must have shapes {shapes}, got {got}")
        if not all(s.is_floating_point() for s in initial_state):
            raise TypeError(
                f"dilated_conv: initial_state must be floating point, got {[s.dtype for s in initial_state]}"
            )
        initial_state = tuple(s.to(device=x.device, dtype=dtype) for s in initial_state)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch, steps):
            raise ValueError(
                f"dilated_conv: mask must be [B, T] = {[batch, steps]}, "
                f"got {list(getattr(mask, 'shape', [type(mask).__name__]))}"
            )
        if mask.dtype != torch.bool:
            raise TypeError(f"dilated_conv: mask must be bool (False = padding), got {mask.dtype}")
        mask = mask.to(x.device)
        x = torch.where(mask[..., None], x, 0)
    return (x, weight, initial_state, mask, int(dilation_factor), activation), {}


def _load_reference():
    from .reference import dilated_conv as kernel

    return kernel


def _load_torch():
    from .torch_impl import dilated_conv as kernel

    return kernel


def _load_triton():
    from .triton_impl import dilated_conv as kernel

    return kernel


def _triton_input_check(*validated_args):
    from .triton_impl import unsupported_reason

    return unsupported_reason(*validated_args)


def _example(kernel_size: int, dilation_factor: int, depth: int, activation: str):
    """A factory of random inputs: C = 3 channels, the given stack, a non-zero initial state."""

    def example(batch: int, length: int, dtype: torch.dtype, generator: torch.Generator) -> dict:
        def randn(*shape):
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        shapes = state_shapes(batch, 3, kernel_size, dilation_factor, depth)
        return {
            "x": randn(batch, length, 3).to(dtype),
            "weight": (randn(depth, 3, kernel_size) / kernel_size**0.5).to(dtype),
            "initial_state": tuple(randn(*shape) for shape in shapes),
            "dilation_factor": dilation_factor,
            "activation": activation,
        }

    return example


def _result(output: tuple, arguments: dict) -> tuple:
    outputs, state = output
    return outputs.to(arguments["x"].dtype), state


OPERATOR = Operator(
    name="dilated_conv",
    backends={"reference": _load_reference, "torch": _load_torch, "triton": _load_triton},
    validate=_validate,
    sequences=("x",),
    native_resets=frozenset({"reference"}),
    result=_result,
    requirements={"triton": triton_unavailable_reason},
    input_checks={"triton": _triton_input_check},
    examples={
        "k3_f2_d3_gelu": _example(3, 2, 3, "gelu"),
        "k2_f3_d2_linear": _example(2, 3, 2, "none"),
    },
)


def dilated_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    initial_state: tuple[torch.Tensor, ...] | None = None,
    mask: torch.Tensor | None = None,
    dilation_factor: int = 2,
    activation: str = "none",
    *,
    resets: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run the convolution stack; see the module docstring. `backend`: None/"auto" or a name."""
    return OPERATOR(x, weight, initial_state, mask, dilation_factor, activation, backend=backend, resets=resets)


def dilated_conv_step(
    x: torch.Tensor,
    weight: torch.Tensor,
    state: tuple[torch.Tensor, ...] | None,
    dilation_factor: int = 2,
    activation: str = "none",
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One token for decoding: x `[B, C]`, state the D windows or None (zeros). Returns `(y [B, C] in x's dtype,
    new windows in the compute dtype)`."""
    outputs, state = OPERATOR(x[:, None], weight, state, None, dilation_factor, activation)
    return outputs[:, 0], state
