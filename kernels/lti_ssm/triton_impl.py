"""Triton kernels of the two SSM convolution-kernel generators (S4D Vandermonde, S4 Cauchy; `docs/architectures/s4.md`,
section 'Triton kernels').

Same functions and contracts as `generators` (the plain-PyTorch versions), without their `[R, N2, L]`
and `[R, K, N2]` complex intermediates. Triton has no complex type: every complex tensor travels as
its real and imaginary parts, and each generator is a `torch.autograd.Function` over those real tensors
(its complex outputs are put together by `torch.complex` outside), so torch's own autograd maps the
real gradients to the gradients of the complex inputs. Complex64 inputs are computed in float32,
complex128 in float64.

Vandermonde (S4D), v = vr + i vi, log_a = x = xr + i xi, all `[R, N2]`:
`K[r, l] = 2 Re sum_n v_n exp(l x_n) = 2 sum_n exp(l xr_n + rho_n) cos(l xi_n + phi_n)` with
`rho = log|v|`, `phi = arg v` (computed by torch before the launch; one exp and one cos per term).
`_vandermonde_kernel`, one program per (block of `BR` rows, block of `BL` steps), loops over n and
accumulates its `[BR, BL]` tile. Backward: with `S0_n = sum_l dK_l exp(l x_n)` and
`S1_n = sum_l l dK_l exp(l x_n)` (complex), `dvr = 2 Re S0`, `dvi = -2 Im S0`, `dxr = 2 Re(v S1)`,
`dxi = -2 Im(v S1)`. `_vandermonde_backward_kernel`, one program per (row, block of `BN` modes), loops
over blocks of `BL` steps, accumulating `[BN, BL]` tiles that it sums over the steps at the end.

Cauchy (S4), v, w `[R, N2]`, nodes z `[K]`:
`out[r, k] = sum_n v_n / (z_k - w_n) + conj(v_n) / (z_k - conj(w_n))`. With `a = zr - wr`,
`b1 = zi - wi`, `b2 = zi + wi`, `q1 = 1 / |z - w|^2 = 1 / (a^2 + b1^2)`, `q2 = 1 / |z - conj w|^2 = 1 / (a^2 + b2^2)`:
`Re out = sum_n vr a (q1 + q2) + vi (b1 q1 - b2 q2)`, `Im out = sum_n vi a (q1 - q2) - vr (b1 q1 + b2 q2)`.
`_cauchy_kernel`, one program per (block of `BR` rows, block of `BK` nodes), loops over n.
Backward, with G = dRe out + i dIm out, `c_k = 1 / (z_k - w)`, `e_k = 1 / (conj z_k - w)`:
`P = sum_k conj(G_k) c_k + G_k e_k`, `P2 = sum_k conj(G_k) c_k^2 + G_k e_k^2`, then
`dv = conj(P)`, `dw = conj(v P2)` (as real + i imaginary part of the gradient). The first term of `out`
is holomorphic in (v, w), the second anti-holomorphic: a holomorphic f contributes `G conj(f')`, an
anti-holomorphic one `conj(G) f'`, with `f'` the derivative in conj(v) or conj(w).
`_cauchy_backward_kernel`, one program per (row, block of `BN` modes), loops over blocks of `BK` nodes.
The nodes get no gradient (`cauchy` refuses a z that requires one).

Every grid is flattened to its first axis (no 65535 limit on the others). Blocks are powers of two,
at most the `*_BLOCK_*` constants below (read at every call), at least 2, shrunk to the next power of
two of small sizes; lanes past the edges load zeros, their terms are masked out of every sum over
steps or nodes (the Cauchy denominators there are replaced by 1), and they are never stored.
On CUDA, float32 `tl.exp` is `ex2.approx` (about 2 ulp, plus the rounding of `x log2 e`), float32
`tl.cos`/`tl.sin` reduce their argument exactly; an argument `l xi` of 1e5 has an ulp of 0.008 in
float32, an error the complex64 PyTorch version shares. The Cauchy terms are formed from `|z - w|^2`,
which must neither overflow nor underflow (1e-19 < |z - w| < 1e19 in float32: S4's bilinear nodes are
at most about 1e16 when computed in float64).
"""

from __future__ import annotations

import contextlib
import os

import torch

try:  # in a `try` so exported remote code does not list Triton as a hard requirement
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("the 'triton' SSM-kernel generators need Triton: pip install 'hf-seqplugins[triton]'") from error

from torch.autograd.function import once_differentiable

from hf_seqplugins import BackendUnavailableError, triton_device_reason

from .generators import Generators
from .torch_impl import convolve

__all__ = ["TRITON_GENERATORS", "cauchy", "generator_unsupported_reason", "lti_ssm", "vandermonde"]

# triton.jit picks the interpreter when the kernels are defined, i.e. when this module is first imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MIN_BLOCK = 2
VANDERMONDE_BLOCK_ROWS = 16
VANDERMONDE_BLOCK_STEPS = 128
CAUCHY_BLOCK_ROWS = 16
CAUCHY_BLOCK_NODES = 64
BACKWARD_BLOCK_MODES = 32
# The backward keeps four [BN, BL] accumulators per program; float64 halves BL to keep them in registers.
BACKWARD_BLOCK_STEPS = {torch.float32: 64, torch.float64: 32}


@triton.jit
def _vandermonde_kernel(
    rho_ptr,
    phi_ptr,
    xr_ptr,
    xi_ptr,
    out_ptr,
    rows,
    modes,
    length,
    BR: tl.constexpr,
    BL: tl.constexpr,
):
    """`out[r, l] = 2 sum_n exp(l xr + rho) cos(l xi + phi)`; inputs `[R, N2]`, out `[R, length]`."""
    pid = tl.program_id(0)
    blocks_l = tl.cdiv(length, BL)
    offs_r = (pid // blocks_l) * BR + tl.arange(0, BR)
    offs_l = (pid % blocks_l) * BL + tl.arange(0, BL)
    row_ok = offs_r < rows
    base = offs_r.to(tl.int64) * modes
    steps = offs_l.to(out_ptr.dtype.element_ty)[None, :]
    acc = tl.zeros([BR, BL], dtype=out_ptr.dtype.element_ty)
    for n in range(0, modes):
        rho = tl.load(rho_ptr + base + n, mask=row_ok, other=0.0)[:, None]
        phi = tl.load(phi_ptr + base + n, mask=row_ok, other=0.0)[:, None]
        xr = tl.load(xr_ptr + base + n, mask=row_ok, other=0.0)[:, None]
        xi = tl.load(xi_ptr + base + n, mask=row_ok, other=0.0)[:, None]
        acc += tl.exp(steps * xr + rho) * tl.cos(steps * xi + phi)
    out_offsets = offs_r.to(tl.int64)[:, None] * length + offs_l[None, :]
    tl.store(out_ptr + out_offsets, 2.0 * acc, mask=row_ok[:, None] & (offs_l < length)[None, :])


@triton.jit
def _vandermonde_backward_kernel(
    vr_ptr,
    vi_ptr,
    xr_ptr,
    xi_ptr,
    dk_ptr,
    dvr_ptr,
    dvi_ptr,
    dxr_ptr,
    dxi_ptr,
    modes,
    length,
    BN: tl.constexpr,
    BL: tl.constexpr,
):
    """Gradients `[R, N2]` of vr, vi, xr, xi from dK `[R, length]` (module docstring)."""
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(modes, BN)
    row = (pid // blocks_n).to(tl.int64)
    offs_n = (pid % blocks_n) * BN + tl.arange(0, BN)
    mode_ok = offs_n < modes
    offsets = row * modes + offs_n
    xr = tl.load(xr_ptr + offsets, mask=mode_ok, other=0.0)[:, None]
    xi = tl.load(xi_ptr + offsets, mask=mode_ok, other=0.0)[:, None]
    dtype = dvr_ptr.dtype.element_ty
    s0r = tl.zeros([BN, BL], dtype=dtype)
    s0i = tl.zeros([BN, BL], dtype=dtype)
    s1r = tl.zeros([BN, BL], dtype=dtype)
    s1i = tl.zeros([BN, BL], dtype=dtype)
    for start in range(0, length, BL):
        offs_l = start + tl.arange(0, BL)
        step_ok = (offs_l < length)[None, :]
        dk = tl.load(dk_ptr + row * length + offs_l, mask=offs_l < length, other=0.0)[None, :]
        steps = offs_l.to(dtype)[None, :]
        weight = tl.where(step_ok, dk * tl.exp(steps * xr), 0.0)
        angle = steps * xi
        re = weight * tl.cos(angle)
        im = weight * tl.sin(angle)
        s0r += re
        s0i += im
        s1r += steps * re
        s1i += steps * im
    sum0r = tl.sum(s0r, axis=1)
    sum0i = tl.sum(s0i, axis=1)
    sum1r = tl.sum(s1r, axis=1)
    sum1i = tl.sum(s1i, axis=1)
    vr = tl.load(vr_ptr + offsets, mask=mode_ok, other=0.0)
    vi = tl.load(vi_ptr + offsets, mask=mode_ok, other=0.0)
    tl.store(dvr_ptr + offsets, 2.0 * sum0r, mask=mode_ok)
    tl.store(dvi_ptr + offsets, -2.0 * sum0i, mask=mode_ok)
    tl.store(dxr_ptr + offsets, 2.0 * (vr * sum1r - vi * sum1i), mask=mode_ok)
    tl.store(dxi_ptr + offsets, -2.0 * (vr * sum1i + vi * sum1r), mask=mode_ok)


@triton.jit
def _cauchy_kernel(
    vr_ptr,
    vi_ptr,
    wr_ptr,
    wi_ptr,
    zr_ptr,
    zi_ptr,
    outr_ptr,
    outi_ptr,
    rows,
    modes,
    nodes,
    BR: tl.constexpr,
    BK: tl.constexpr,
):
    """`out[r, k] = sum_n v / (z_k - w) + conj(v) / (z_k - conj(w))`; v, w `[R, N2]`, z `[K]`, out `[R, K]`."""
    pid = tl.program_id(0)
    blocks_k = tl.cdiv(nodes, BK)
    offs_r = (pid // blocks_k) * BR + tl.arange(0, BR)
    offs_k = (pid % blocks_k) * BK + tl.arange(0, BK)
    row_ok = offs_r < rows
    node_ok = offs_k < nodes
    base = offs_r.to(tl.int64) * modes
    zr = tl.load(zr_ptr + offs_k, mask=node_ok, other=0.0)[None, :]
    zi = tl.load(zi_ptr + offs_k, mask=node_ok, other=0.0)[None, :]
    valid = row_ok[:, None] & node_ok[None, :]
    acc_r = tl.zeros([BR, BK], dtype=outr_ptr.dtype.element_ty)
    acc_i = tl.zeros([BR, BK], dtype=outr_ptr.dtype.element_ty)
    for n in range(0, modes):
        vr = tl.load(vr_ptr + base + n, mask=row_ok, other=0.0)[:, None]
        vi = tl.load(vi_ptr + base + n, mask=row_ok, other=0.0)[:, None]
        wr = tl.load(wr_ptr + base + n, mask=row_ok, other=0.0)[:, None]
        wi = tl.load(wi_ptr + base + n, mask=row_ok, other=0.0)[:, None]
        a = zr - wr
        b1 = zi - wi
        b2 = zi + wi
        q1 = 1.0 / tl.where(valid, a * a + b1 * b1, 1.0)
        q2 = 1.0 / tl.where(valid, a * a + b2 * b2, 1.0)
        acc_r += vr * a * (q1 + q2) + vi * (b1 * q1 - b2 * q2)
        acc_i += vi * a * (q1 - q2) - vr * (b1 * q1 + b2 * q2)
    out_offsets = offs_r.to(tl.int64)[:, None] * nodes + offs_k[None, :]
    tl.store(outr_ptr + out_offsets, acc_r, mask=valid)
    tl.store(outi_ptr + out_offsets, acc_i, mask=valid)


@triton.jit
def _cauchy_backward_kernel(
    vr_ptr,
    vi_ptr,
    wr_ptr,
    wi_ptr,
    zr_ptr,
    zi_ptr,
    gr_ptr,
    gi_ptr,
    dvr_ptr,
    dvi_ptr,
    dwr_ptr,
    dwi_ptr,
    modes,
    nodes,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    """Gradients `[R, N2]` of vr, vi, wr, wi from the gradients `[R, K]` of Re out, Im out (module docstring)."""
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(modes, BN)
    row = (pid // blocks_n).to(tl.int64)
    offs_n = (pid % blocks_n) * BN + tl.arange(0, BN)
    mode_ok = offs_n < modes
    offsets = row * modes + offs_n
    wr = tl.load(wr_ptr + offsets, mask=mode_ok, other=0.0)[:, None]
    wi = tl.load(wi_ptr + offsets, mask=mode_ok, other=0.0)[:, None]
    dtype = dvr_ptr.dtype.element_ty
    pr = tl.zeros([BN, BK], dtype=dtype)
    pi = tl.zeros([BN, BK], dtype=dtype)
    p2r = tl.zeros([BN, BK], dtype=dtype)
    p2i = tl.zeros([BN, BK], dtype=dtype)
    for start in range(0, nodes, BK):
        offs_k = start + tl.arange(0, BK)
        in_range = offs_k < nodes
        valid = mode_ok[:, None] & in_range[None, :]
        zr = tl.load(zr_ptr + offs_k, mask=in_range, other=0.0)[None, :]
        zi = tl.load(zi_ptr + offs_k, mask=in_range, other=0.0)[None, :]
        gr = tl.load(gr_ptr + row * nodes + offs_k, mask=in_range, other=0.0)[None, :]
        gi = tl.load(gi_ptr + row * nodes + offs_k, mask=in_range, other=0.0)[None, :]
        a = zr - wr
        b1 = zi - wi
        b2 = zi + wi
        q1 = tl.where(valid, 1.0 / tl.where(valid, a * a + b1 * b1, 1.0), 0.0)
        q2 = tl.where(valid, 1.0 / tl.where(valid, a * a + b2 * b2, 1.0), 0.0)
        cr = a * q1
        ci = -b1 * q1
        er = a * q2
        ei = b2 * q2
        pr += gr * (cr + er) + gi * (ci - ei)
        pi += gr * (ci + ei) + gi * (er - cr)
        c2r = cr * cr - ci * ci
        c2i = 2.0 * cr * ci
        e2r = er * er - ei * ei
        e2i = 2.0 * er * ei
        p2r += gr * (c2r + e2r) + gi * (c2i - e2i)
        p2i += gr * (c2i + e2i) + gi * (e2r - c2r)
    sum_r = tl.sum(pr, axis=1)
    sum_i = tl.sum(pi, axis=1)
    sum2r = tl.sum(p2r, axis=1)
    sum2i = tl.sum(p2i, axis=1)
    vr = tl.load(vr_ptr + offsets, mask=mode_ok, other=0.0)
    vi = tl.load(vi_ptr + offsets, mask=mode_ok, other=0.0)
    tl.store(dvr_ptr + offsets, sum_r, mask=mode_ok)
    tl.store(dvi_ptr + offsets, -sum_i, mask=mode_ok)
    tl.store(dwr_ptr + offsets, vr * sum2r - vi * sum2i, mask=mode_ok)
    tl.store(dwi_ptr + offsets, -(vr * sum2i + vi * sum2r), mask=mode_ok)


def generator_unsupported_reason(device: torch.device) -> str | None:
    """None when the kernels run on `device` (CUDA with compute capability >= 8.0, or CPU when Triton's
    interpreter was on at this module's first import), else why not."""
    return triton_device_reason(torch.device(device), INTERPRETED, __name__)


def vandermonde(v: torch.Tensor, log_a: torch.Tensor, length: int) -> torch.Tensor:
    """`K[r, l] = 2 Re sum_n v[r, n] exp(l * log_a[r, n])` for l < length (one mode of each conjugate pair stored).

    v, log_a `[R, N2]` complex -> K `[R, length]` real: float32 for complex64, float64 for complex128
    (mixed or real inputs are promoted). Differentiable in v and log_a (not twice). Raises
    `BackendUnavailableError` where `generator_unsupported_reason` refuses the device."""
    dtype = _compute_dtype("vandermonde", v, log_a)
    if v.dim() != 2 or v.shape != log_a.shape:
        raise ValueError(
            f"vandermonde needs v and log_a of one shape [R, N2], got {list(v.shape)} and {list(log_a.shape)}"
        )
    length = int(length)
    if length < 0:
        raise ValueError(f"vandermonde needs length >= 0, got {length}")
    _check_device("vandermonde", v, log_a)
    complex_dtype = _complex_of(dtype)
    v, log_a = v.to(complex_dtype), log_a.to(complex_dtype)
    return _Vandermonde.apply(v.real, v.imag, log_a.real, log_a.imag, length)


def cauchy(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`out[..., r, k] = sum_n v[..., r, n] / (z[k] - w[r, n]) + conj(v[..., r, n]) / (z[k] - conj(w[r, n]))` (S4's
    Cauchy sums).

    v `[..., R, N2]` complex (leading dimensions share the poles w), w `[R, N2]` complex, z `[K]` complex ->
    `[..., R, K]` complex (complex64, or complex128 when any input is). Differentiable in v and w (not twice);
    z is a constant: one that requires a gradient is refused. Raises `BackendUnavailableError` where
    `generator_unsupported_reason` refuses the device."""
    dtype = _compute_dtype("cauchy", v, z, w)
    if v.dim() < 2 or w.dim() != 2 or v.shape[-2:] != w.shape or z.dim() != 1:
        raise ValueError(
            f"cauchy needs v [..., R, N2], w [R, N2] and z [K], got v {list(v.shape)}, "
            f"w {list(w.shape)}, z {list(z.shape)}"
        )
    leading, poles, rows = v.shape[:-2], w.shape[0], v.shape[:-1].numel()
    v, w = v.reshape(rows, w.shape[-1]), w.expand(*leading, *w.shape).reshape(rows, w.shape[-1])
    if z.requires_grad and torch.is_grad_enabled():
        raise ValueError("the Triton cauchy gives no gradient to the nodes z; pass z.detach()")
    _check_device("cauchy", v, z, w)
    complex_dtype = _complex_of(dtype)
    v, z, w = (t.to(complex_dtype) for t in (v, z, w))
    real, imag = _Cauchy.apply(v.real, v.imag, w.real, w.imag, z.real, z.imag)
    return torch.complex(real, imag).reshape(*leading, poles, z.shape[0])


class _Vandermonde(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vr, vi, xr, xi, length):
        vr, vi, xr, xi = (t.contiguous() for t in (vr, vi, xr, xi))
        ctx.save_for_backward(vr, vi, xr, xi)
        rows, modes = vr.shape
        out = vr.new_zeros(rows, length)
        if out.numel() == 0 or modes == 0:
            return out
        rho = torch.log(torch.hypot(vr, vi))
        phi = torch.atan2(vi, vr)
        block_rows = _block(rows, VANDERMONDE_BLOCK_ROWS)
        block_steps = _block(length, VANDERMONDE_BLOCK_STEPS)
        grid = (triton.cdiv(rows, block_rows) * triton.cdiv(length, block_steps),)
        with _device_guard(vr.device):
            _vandermonde_kernel[grid](rho, phi, xr, xi, out, rows, modes, length, BR=block_rows, BL=block_steps)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        vr, vi, xr, xi = ctx.saved_tensors
        rows, modes = vr.shape
        length = grad.shape[1]
        grads = [torch.zeros_like(vr) for _ in range(4)]
        if vr.numel() and length:
            grad = grad.to(vr.dtype).contiguous()
            block_modes = _block(modes, BACKWARD_BLOCK_MODES)
            block_steps = _block(length, BACKWARD_BLOCK_STEPS[vr.dtype])
            grid = (rows * triton.cdiv(modes, block_modes),)
            with _device_guard(vr.device):
                _vandermonde_backward_kernel[grid](
                    vr, vi, xr, xi, grad, *grads, modes, length, BN=block_modes, BL=block_steps
                )
        return (*grads, None)


class _Cauchy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vr, vi, wr, wi, zr, zi):
        vr, vi, wr, wi, zr, zi = (t.contiguous() for t in (vr, vi, wr, wi, zr, zi))
        ctx.save_for_backward(vr, vi, wr, wi, zr, zi)
        rows, modes = vr.shape
        nodes = zr.shape[0]
        real = vr.new_zeros(rows, nodes)
        imag = vr.new_zeros(rows, nodes)
        if real.numel() and modes:
            block_rows = _block(rows, CAUCHY_BLOCK_ROWS)
            block_nodes = _block(nodes, CAUCHY_BLOCK_NODES)
            grid = (triton.cdiv(rows, block_rows) * triton.cdiv(nodes, block_nodes),)
            with _device_guard(vr.device):
                _cauchy_kernel[grid](
                    vr, vi, wr, wi, zr, zi, real, imag, rows, modes, nodes, BR=block_rows, BK=block_nodes
                )
        return real, imag

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_real, grad_imag):
        vr, vi, wr, wi, zr, zi = ctx.saved_tensors
        rows, modes = vr.shape
        nodes = zr.shape[0]
        grads = [torch.zeros_like(vr) for _ in range(4)]
        if vr.numel() and nodes:
            grad_real, grad_imag = (g.to(vr.dtype).contiguous() for g in (grad_real, grad_imag))
            block_modes = _block(modes, BACKWARD_BLOCK_MODES)
            block_nodes = _block(nodes, BACKWARD_BLOCK_STEPS[vr.dtype])
            grid = (rows * triton.cdiv(modes, block_modes),)
            with _device_guard(vr.device):
                _cauchy_backward_kernel[grid](
                    vr, vi, wr, wi, zr, zi, grad_real, grad_imag, *grads, modes, nodes, BN=block_modes, BK=block_nodes
                )
        return (*grads, None, None)


def _compute_dtype(name: str, *tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is complex128 or float64, float32 for complex64 / float32 / half inputs."""
    for tensor in tensors:
        if not (tensor.is_complex() or tensor.is_floating_point()):
            raise TypeError(f"{name} needs complex (or real floating) tensors, got {tensor.dtype}")
    wide = any(t.dtype in (torch.complex128, torch.float64) for t in tensors)
    return torch.float64 if wide else torch.float32


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _check_device(name: str, *tensors: torch.Tensor) -> None:
    device = tensors[0].device
    if any(t.device != device for t in tensors):
        raise ValueError(f"{name} needs all inputs on one device, got {[str(t.device) for t in tensors]}")
    reason = generator_unsupported_reason(device)
    if reason is not None:
        raise BackendUnavailableError(f"the Triton {name} cannot run here: {reason}")


def _block(size: int, limit: int) -> int:
    """A power of two in [MIN_BLOCK, limit], no larger than needed for `size`."""
    return max(MIN_BLOCK, min(limit, triton.next_power_of_2(max(size, 1))))


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


TRITON_GENERATORS = Generators(vandermonde, cauchy)


def lti_ssm(u, system, initial_state, mask, return_final_state):
    """The `triton` backend of `hf_seqplugins.kernels.lti_ssm`: convolution mode with the kernels above."""
    return convolve(u, system, initial_state, return_final_state, TRITON_GENERATORS)
