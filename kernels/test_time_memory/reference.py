"""Reference backend of `test_time_memory`: the recurrence one token at a time, inner gradients by autograd.

Per token t, with chunk-start accumulators C and accumulators X (see `memory`):

1. ``G_t = d inner_loss(M_W(k_t) - v_t) / dW`` at ``W = gradient_weights(C)`` (autograd through the MLP);
2. ``X_t = alpha_t X_{t-1} - eta_t G_t``;
3. ``y_t = M_{W_t}(q_t)`` with ``W_t = read_weights(X_t, C)`` ("dual_form") or ``gradient_weights(C)``
   ("chunk_start");
4. after the chunk's last token (`memory_chunk` real tokens), C = X.

With `memory_chunk` = 1 this is the exact per-token recurrence of the paper (gradients at the current weights).
"""

from __future__ import annotations

import torch

from .memory import gradient_weights, inner_loss, mlp, read_weights


def inner_gradients(variant, weights, k, v, delta, bias_power, eps):
    """Gradients of the inner loss at `weights` `(w1 [B, H, D, E], w2 [B, H, E, D])` for one token's keys and
    values `[B, H, D]` (and Yaad's `delta` `[B, H]`), differentiable when any input needs gradients."""
    outer = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*weights, k, v, delta))
    with torch.enable_grad():
        if not outer:
            k, v = k.detach(), v.detach()
            delta = None if delta is None else delta.detach()
        leaves = [w if outer and w.requires_grad else w.detach().requires_grad_(True) for w in weights]
        error = mlp(*leaves, k[..., None, :])[..., 0, :] - v
        loss = inner_loss(variant, error, delta, bias_power, eps)
        return torch.autograd.grad(loss, leaves, create_graph=outer)


def test_time_memory(
    q, k, v, gates, state, mask, variant, memory_chunk, retrieval, bias_power, retention_power, memora_scale, eps
):
    """See `hf_seqplugins.kernels.test_time_memory` for the contract (inputs arrive validated, the state as full
    accumulators ``(X1, X2, C1, C2, count)``)."""
    x1, x2, c1, c2, count = state
    outputs = []
    for t in range(q.shape[1]):
        lr, decay = gates[:, t, :, 0, None, None], gates[:, t, :, 1, None, None]
        delta = gates[:, t, :, 2] if variant == "yaad" else None
        chunk_start = [gradient_weights(variant, c, memora_scale, retention_power, eps) for c in (c1, c2)]
        g1, g2 = inner_gradients(variant, chunk_start, k[:, t], v[:, t], delta, bias_power, eps)
        new_x1, new_x2 = decay * x1 - lr * g1, decay * x2 - lr * g2
        if retrieval == "chunk_start":
            read = chunk_start
        else:
            pairs = ((new_x1, c1), (new_x2, c2))
            read = [read_weights(variant, x, c, memora_scale, retention_power, eps) for x, c in pairs]
        outputs.append(mlp(*read, q[:, t, :, None, :])[..., 0, :])
        new_count = count + 1
        complete = (new_count >= memory_chunk)[:, None, None, None]
        new_c1, new_c2 = torch.where(complete, new_x1, c1), torch.where(complete, new_x2, c2)
        new_count = torch.where(new_count >= memory_chunk, 0, new_count)
        new = (new_x1, new_x2, new_c1, new_c2, new_count)
        if mask is not None:
            real = mask[:, t]
            new = tuple(torch.where(real.view(-1, *[1] * (n.dim() - 1)), n, o) for n, o in zip(new, state))
        state = new
        x1, x2, c1, c2, count = state
    return torch.stack(outputs, dim=1), state
