"""Triton backend of `dilated_conv` (`docs/architectures/tcnca.md`): one kernel launch per layer, the
convolution and the GELU between layers fused.

Each program computes a tile of `BT` time steps x `BC` channels of one batch row: for every tap j it loads the
inputs j * f^i steps back, from the layer's inputs where that index is >= 0 and from the window state (the
layer's last (K - 1) f^i inputs before the call) where it is negative, with masked loads (so T and C need not be
powers of two), accumulates ``w[c, j] * input``, applies the GELU (``0.5 y (1 + erf(y / sqrt 2))``) when asked
and stores the tile. Grid ``(B, cdiv(T, BT), cdiv(C, BC))``. Padding, the new window states and the D layers
are driven by `torch_impl.run_stack` (the same driver as the torch backend).

Computation runs in the (validated) input dtype, float32 or float64.

Backward: `_LayerFunction.backward` recomputes the layer with `torch_impl.conv_layer` under
`torch.enable_grad()` and returns its gradients of the window, the inputs and the weights (not itself
differentiable: `once_differentiable`).
"""

from __future__ import annotations

import contextlib
import os

import torch

try:  # in a `try` so exported remote code does not list Triton as a hard requirement
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("the 'triton' backend needs Triton: pip install 'hf-seqplugins[triton]'") from error

from hf_seqplugins import BackendUnavailableError, triton_device_reason

from . import torch_impl

__all__ = ["dilated_conv", "unsupported_reason"]

# triton.jit picks the interpreter when the kernels are defined, i.e. when this module is first imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TIME_BLOCK = 16 if INTERPRETED else 64
MAX_CHANNEL_BLOCK = 64
MAX_GRID = 65535


@triton.jit
def _layer_kernel(
    x_ptr,
    window_ptr,
    w_ptr,
    out_ptr,
    steps,
    span,
    channels,
    taps,
    dilation,
    GELU: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
):
    """out `[B, T, C]` from inputs x `[B, T, C]`, window `[B, span, C]` and weights `[C, K]`, all contiguous."""
    row = tl.program_id(0).to(tl.int64)
    times = tl.program_id(1) * BT + tl.arange(0, BT)
    cols = tl.program_id(2) * BC + tl.arange(0, BC)
    time_ok = times < steps
    col_ok = cols < channels
    x_row = x_ptr + row * steps * channels
    window_row = window_ptr + row * span * channels
    acc = tl.zeros((BT, BC), dtype=x_ptr.dtype.element_ty)
    for j in range(0, taps):
        source = times - j * dilation  # [BT]; negative: in the window, at span + source
        from_x = (source >= 0) & time_ok
        from_window = (source < 0) & (source + span >= 0) & time_ok
        x_at = x_row + source.to(tl.int64)[:, None] * channels + cols[None, :]
        window_at = window_row + (source + span).to(tl.int64)[:, None] * channels + cols[None, :]
        values = tl.load(x_at, mask=from_x[:, None] & col_ok[None, :], other=0.0)
        values += tl.load(window_at, mask=from_window[:, None] & col_ok[None, :], other=0.0)
        weight = tl.load(w_ptr + cols * taps + j, mask=col_ok, other=0.0)
        acc += weight[None, :] * values
    if GELU:
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    out_at = out_ptr + row * steps * channels + times.to(tl.int64)[:, None] * channels + cols[None, :]
    tl.store(out_at, acc, mask=time_ok[:, None] & col_ok[None, :])


def _channel_block(channels: int) -> int:
    return min(MAX_CHANNEL_BLOCK, triton.next_power_of_2(max(channels, 1)))


def _device_context(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _forward(window, inputs, weight, dilation, gelu):
    batch, steps, channels = inputs.shape
    window, inputs, weight = window.contiguous(), inputs.contiguous(), weight.contiguous()
    outputs = torch.empty_like(inputs)
    block = _channel_block(channels)
    grid = (batch, triton.cdiv(steps, TIME_BLOCK), triton.cdiv(channels, block))
    with _device_context(inputs.device):
        _layer_kernel[grid](
            inputs,
            window,
            weight,
            outputs,
            steps,
            window.shape[1],
            channels,
            weight.shape[1],
            dilation,
            GELU=gelu,
            BT=TIME_BLOCK,
            BC=block,
        )
    return outputs


class _LayerFunction(torch.autograd.Function):
    """The Triton forward of one layer, the `F.conv1d` backward (recomputed from the saved inputs)."""

    @staticmethod
    def forward(ctx, window, inputs, weight, dilation, gelu):
        ctx.dilation, ctx.gelu = dilation, gelu
        ctx.save_for_backward(window, inputs, weight)
        return _forward(window, inputs, weight, dilation, gelu)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_outputs):
        saved = ctx.saved_tensors
        needed = ctx.needs_input_grad[:3]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(need) for t, need in zip(saved, needed)]
            outputs = torch_impl.conv_layer(*inputs, ctx.dilation, ctx.gelu)
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(outputs, wanted, d_outputs) if wanted else [])
        return (*(next(grads) if need else None for need in needed), None, None)


def _layer(window, inputs, weight, dilation, gelu):
    if torch.is_grad_enabled() and any(t.requires_grad for t in (window, inputs, weight)):
        return _LayerFunction.apply(window, inputs, weight, dilation, gelu)
    return _forward(window, inputs, weight, dilation, gelu)


def unsupported_reason(x, weight, initial_state, mask, dilation_factor, activation) -> str | None:
    """None when the Triton kernel computes these (validated) inputs, else why not."""
    reason = triton_device_reason(x.device, INTERPRETED, __name__)
    if reason is not None:
        return reason
    for name, tensor in (
        ("x", x),
        ("weight", weight),
        *((f"initial_state[{i}]", s) for i, s in enumerate(initial_state)),
    ):
        if tensor.dtype not in (torch.float32, torch.float64):
            return f"the kernel computes in float32 or float64, got {tensor.dtype} for {name}"
    batch, steps, channels = x.shape
    blocks = (batch, triton.cdiv(steps, TIME_BLOCK), triton.cdiv(channels, _channel_block(channels)))
    if max(blocks[1:]) > MAX_GRID or batch > 2**31 - 1:
        return f"the launch grid {blocks} exceeds Triton's limits"
    return None


def dilated_conv(x, weight, initial_state, mask, dilation_factor, activation):
    """See `hf_seqplugins.kernels.dilated_conv` for the contract (inputs arrive validated). Raises
    `BackendUnavailableError` for what `unsupported_reason` refuses."""
    reason = unsupported_reason(x, weight, initial_state, mask, dilation_factor, activation)
    if reason is not None:
        raise BackendUnavailableError(f"backend 'triton' for 'dilated_conv' cannot run these inputs: {reason}")
    return torch_impl.run_stack(x, weight, initial_state, mask, dilation_factor, activation, layer=_layer)
