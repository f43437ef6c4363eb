"""`lti_ssm` (S4D, S4, LSSL): convolution mode (SSM kernel + FFT) vs the step recurrence, kernel generation
included, on CUDA also with the Triton Vandermonde / Cauchy kernels; H channels, state size N, one output."""

from __future__ import annotations

import math

import torch

from hf_seqplugins.kernels.lti_ssm import DenseSystem, DiagonalSystem, DPLRSystem, lti_ssm
from hf_seqplugins.plugins.s4.hippo import hippo, nplr_legs

from . import Case

CHANNELS, STATE = 64, 64
RECURRENCE_LIMIT = 1024


def _parameters(device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """HiPPO-initialised S4 parameters (the leaves that get gradients)."""
    lam, p, b, _ = nplr_legs(STATE)
    log_dt = torch.empty(CHANNELS, dtype=torch.float64).uniform_(math.log(1e-3), math.log(1e-1), generator=generator)
    c = torch.randn(1, CHANNELS, STATE // 2, dtype=torch.complex64, generator=generator)
    leaves = {
        "lam": lam.expand(CHANNELS, -1),
        "p": p.expand(1, CHANNELS, -1),
        "b": b.expand(CHANNELS, -1),
        "c": c,
        "log_dt": log_dt,
    }
    return {
        name: t.to(device=device, dtype=torch.complex64 if t.is_complex() else torch.float32)
        .contiguous()
        .requires_grad_()
        for name, t in leaves.items()
    }


def case(structure: str, steps: int, device: torch.device) -> Case:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, steps, CHANNELS, generator=g).to(device).requires_grad_()
    leaves = _parameters(device, g)
    a_hippo, b_hippo = (t.to(device=device, dtype=torch.float32) for t in hippo("legs", STATE))
    c_real = leaves["c"].real.contiguous().detach().repeat(1, 1, 2).requires_grad_()

    def system():
        dt = torch.exp(leaves["log_dt"])
        if structure == "S4D":
            step = dt[:, None] * leaves["lam"]
            return DiagonalSystem(step, leaves["b"] * torch.expm1(step) / leaves["lam"], leaves["c"])
        if structure == "S4":
            return DPLRSystem(leaves["lam"], leaves["p"], leaves["b"], leaves["c"], dt, steps)
        identity = torch.eye(STATE, device=device)
        implicit = identity - dt[:, None, None] / 2 * a_hippo
        a_bar = torch.linalg.solve(implicit, identity + dt[:, None, None] / 2 * a_hippo)
        return DenseSystem(a_bar, torch.linalg.solve(implicit, dt[:, None] * b_hippo), c_real)

    def ours(backend):
        return lambda: lti_ssm(u, system(), backend=backend, return_final_state=False)[0]

    implementations = {"ours: torch (kernel + FFT)": ours("torch")}
    if device.type == "cuda" and structure != "LSSL":
        implementations["ours: triton (kernel + FFT)"] = ours("triton")
    if steps <= RECURRENCE_LIMIT:
        implementations["ours: reference (step loop)"] = ours("reference")
    log_steps = math.log2(2 * steps)
    # FFT convolution (3 real FFTs of length 2T per channel, ~2.5 n log2 n flops each) plus the kernel:
    # Vandermonde / Cauchy ~ 8 real flops per (mode, step) and pair; Krylov ~ 2 N^2 per step
    kernel = {"S4D": 8 * STATE // 2 * steps, "S4": 4 * 8 * STATE // 2 * steps // 2, "LSSL": 2 * STATE**2 * steps}[
        structure
    ]
    flops = CHANNELS * (3 * 2.5 * 2 * steps * log_steps + kernel)
    inputs = [u, c_real] + list(leaves.values())
    return Case(f"lti_ssm ({structure})", f"B1 H{CHANNELS} T{steps} N={STATE}", flops, inputs, implementations)


def cases(quick: bool, device: torch.device) -> list[Case]:
    lengths = [64] if quick else [256, 1024, 4096, 16384]
    return [case(structure, steps, device) for structure in ("S4D", "S4", "LSSL") for steps in lengths]
