"""Chunked linear + cross-entropy that never materialises the full logits (NF §4: fused
linear+CE saved ~20 GB per GPU; here in plain PyTorch, Liger's kernel as an optional backend).

loss = Σ_i w_i · CE(h_i · Wᵀ, y_i) over tokens with y_i != ignore_index   (reduction "sum")
       divided by Σ_i w_i over those tokens                                 (reduction "mean")

The forward walks over row chunks of h: per chunk it forms the (chunk, V) logits in fp32, takes
the loss, turns them in place into softmax − onehot and folds that into dL/dh (chunk rows,
times w) and dL/dW (accumulated, against w·h), then drops them. Peak extra memory is one
chunk of logits plus dL/dW, not N×V. The backward only scales the stored gradients by
`grad_output`, so gradient accumulation and loss scaling (Lightning divides the loss by
accumulate_grad_batches) stay exact.
"""
from __future__ import annotations

import torch

_LIGER = None  # optional CUDA backend, imported in this one place


def _liger():
    global _LIGER
    if _LIGER is None:
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
            _LIGER = liger_fused_linear_cross_entropy
        except Exception:  # not installed / no Triton: fall back to plain PyTorch
            _LIGER = False
    return _LIGER or None


def default_chunk(n_tokens: int, vocab: int, budget_bytes: int = 192 * 2**20) -> int:
    """Rows per chunk so one fp32 logits chunk stays within `budget_bytes` (>= 1). Larger chunks
    run the two (c, V) matmuls and the V×D accumulation nearer full GEMM speed (on a CPU, 99-row
    chunks ran at ~2/3 the speed of 256-row ones); the budget keeps the peak at ~0.11x naive for
    4096 tokens × 168k vocabulary."""
    return max(1, min(n_tokens, budget_bytes // (4 * vocab)))


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_ND, W_VD, target_N, weight_N, ignore_index: int, chunk: int, denom: float):
        N, V = h_ND.shape[0], W_VD.shape[0]
        acc = torch.promote_types(h_ND.dtype, torch.float32)  # compute in >= fp32
        need_h, need_W = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h_ND) if need_h else None
        grad_W = torch.zeros(W_VD.shape, dtype=acc, device=W_VD.device) if need_W else None
        loss_N = torch.zeros(N, dtype=acc, device=h_ND.device)
        W_mm = W_VD if W_VD.dtype == h_ND.dtype else W_VD.to(h_ND.dtype)  # one cast, not one per chunk
        for a in range(0, N, chunk):
            h_c = h_ND[a:a + chunk]
            t_c = target_N[a:a + chunk]
            valid = t_c != ignore_index
            tgt = torch.where(valid, t_c, 0)
            w_c = weight_N[a:a + chunk].to(acc) * valid / denom
            x = (h_c @ W_mm.T).to(acc)  # (c, V) logits: the only large temporary, reused in place
            rows = torch.arange(len(t_c), device=x.device)
            x_t = x[rows, tgt]
            m = x.amax(-1, keepdim=True)
            z = x.sub_(m).exp_().sum(-1, keepdim=True)  # x := exp(logits − max)
            loss_N[a:a + chunk] = ((z.log() + m).squeeze(-1) - x_t) * valid  # lse − target logit
            if need_h or need_W:
                g = x.div_(z)  # softmax
                g[rows, tgt] -= 1.0  # dCE/dlogits; the row weights w_c are folded into the
                g = g.to(h_ND.dtype)  # (c, D) side below instead of a pass over (c, V)
                if need_h:
                    grad_h[a:a + chunk] = (g @ W_mm) * w_c[:, None].to(h_ND.dtype)
                if need_W:
                    grad_W.addmm_(g.T.to(acc), (h_c * w_c[:, None].to(h_c.dtype)).to(acc))
            x = g = None  # free the chunk before the next one is allocated
        loss = (loss_N * weight_N.to(acc)).sum() / denom
        ctx.save_for_backward(grad_h if need_h else None, grad_W.to(W_VD.dtype) if need_W else None)
        ctx.mark_non_differentiable(loss_N)
        return loss, loss_N

    @staticmethod
    def backward(ctx, grad_loss, _grad_loss_N):
        # The gradients were formed in the forward for grad_output = 1; scale them in place (no
        # second V×D copy). Hence the graph cannot be backpropagated twice (retain_graph).
        if getattr(ctx, "done", False):
            raise RuntimeError("fused_linear_cross_entropy does not support a second backward (retain_graph)")
        ctx.done = True
        grad_h, grad_W = ctx.saved_tensors
        if grad_h is not None:
            grad_h.mul_(grad_loss.to(grad_h.dtype))
        if grad_W is not None:
            grad_W.mul_(grad_loss.to(grad_W.dtype))
        return grad_h, grad_W, None, None, None, None, None


def fused_linear_cross_entropy(h_ND: torch.Tensor, W_VD: torch.Tensor, target_N: torch.Tensor,
                               weight_N: torch.Tensor | None = None, *, ignore_index: int = -100,
                               reduction: str = "mean", chunk: int | None = None,
                               backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted CE of the linear head `h @ Wᵀ` without full logits.

    Returns (loss, per-token CE (N,) detached, unweighted, 0 on ignored tokens) — the second
    output is what per-scale / text-vs-vision logging reads. backend "liger" uses Liger's
    CUDA kernel when installed and the weights are uniform (it has no per-token weights, and
    no per-token losses: those come back as NaN); anything else runs the chunked PyTorch path."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    h_ND, target_N = h_ND.reshape(-1, h_ND.shape[-1]), target_N.reshape(-1)
    if weight_N is None:
        weight_N = torch.ones(target_N.shape, dtype=torch.float32, device=h_ND.device)
    weight_N = weight_N.reshape(-1)
    if not (h_ND.shape[0] == target_N.shape[0] == weight_N.shape[0]):
        raise ValueError(f"token counts differ: h {h_ND.shape[0]}, target {target_N.shape[0]}, weight {weight_N.shape[0]}")
    valid = target_N != ignore_index
    denom = float((weight_N * valid).sum()) if reduction == "mean" else 1.0
    denom = denom if denom > 0 else 1.0
    if backend == "liger" and h_ND.is_cuda and _liger() is not None and bool((weight_N[valid] == 1).all()):
        loss = _liger()(h_ND, W_VD, target_N, ignore_index=ignore_index, reduction="sum") / denom
        return loss, torch.full(target_N.shape, float("nan"), device=h_ND.device)
    chunk = chunk or default_chunk(h_ND.shape[0], W_VD.shape[0])
    return _ChunkedLinearCE.apply(h_ND, W_VD, target_N, weight_N, ignore_index, chunk, denom)


def naive_linear_cross_entropy(h_ND, W_VD, target_N, weight_N=None, *, ignore_index=-100, reduction="mean"):
    """The reference: full logits, then F.cross_entropy (what the benchmark compares against)."""
    logits = (h_ND.reshape(-1, h_ND.shape[-1]) @ W_VD.T)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    ce = torch.nn.functional.cross_entropy(logits, target_N.reshape(-1), ignore_index=ignore_index, reduction="none")
    w = torch.ones_like(ce) if weight_N is None else weight_N.reshape(-1).to(ce.dtype)
    w = w * (target_N.reshape(-1) != ignore_index)
    loss = (ce * w).sum()
    return loss / w.sum().clamp_min(1e-12) if reduction == "mean" else loss
