"""Chunked fused linear+CE == naive CE in value and gradient (weights, ignore_index,
grad_output scaling as in gradient accumulation)."""
import pytest
import torch

from modules.common.fused_ce import fused_linear_cross_entropy, naive_linear_cross_entropy


def _data(N=37, D=16, V=101, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=dtype, requires_grad=True)
    W = torch.randn(V, D, generator=g, dtype=dtype, requires_grad=True)
    t = torch.randint(0, V, (N,), generator=g)
    t[::5] = -100
    w = torch.rand(N, generator=g, dtype=torch.float64) * 2
    return h, W, t, w


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk", [1, 8, 37, 100])
@pytest.mark.parametrize("weighted", [False, True])
def test_value_and_gradient_equal_naive(reduction, chunk, weighted):
    h, W, t, w = _data()
    w = w if weighted else None
    scale = 0.25  # grad_output != 1: gradient accumulation divides the loss
    ref = naive_linear_cross_entropy(h, W, t, w, reduction=reduction)
    (ref * scale).backward()
    gh, gW = h.grad.clone(), W.grad.clone()
    h.grad = W.grad = None
    got, per_tok = fused_linear_cross_entropy(h, W, t, w, reduction=reduction, chunk=chunk)
    (got * scale).backward()
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h.grad, gh, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(W.grad, gW, rtol=1e-6, atol=1e-8)
    ce = torch.nn.functional.cross_entropy(h.detach() @ W.detach().T, t, reduction="none", ignore_index=-100)
    torch.testing.assert_close(per_tok.double(), ce, rtol=1e-5, atol=1e-6)


def test_two_backward_passes_accumulate_like_naive():
    h, W, t, w = _data(seed=1)
    for fn in (naive_linear_cross_entropy, lambda *a: fused_linear_cross_entropy(*a, chunk=7)[0]):
        h.grad = W.grad = None
        for half in (slice(0, 20), slice(20, 37)):
            (fn(h[half], W, t[half], w[half]) / 2).backward()
        if fn is naive_linear_cross_entropy:
            ref = (h.grad.clone(), W.grad.clone())
    torch.testing.assert_close(h.grad, ref[0])
    torch.testing.assert_close(W.grad, ref[1])


def test_float32_and_frozen_head():
    h, W, t, _ = _data(N=64, D=32, V=300, dtype=torch.float32)
    W.requires_grad_(False)
    got, _ = fused_linear_cross_entropy(h, W, t, chunk=16)
    got.backward()
    ref_h = h.grad.clone()
    h.grad = None
    naive_linear_cross_entropy(h, W, t).backward()
    torch.testing.assert_close(ref_h, h.grad, rtol=1e-4, atol=1e-6)
    assert W.grad is None


def test_all_ignored_gives_zero_loss_and_grad():
    h, W, t, _ = _data(N=8)
    t[:] = -100
    loss, _ = fused_linear_cross_entropy(h, W, t)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(h.grad.abs().sum()) == 0.0


def test_bf16_hidden_with_fp32_head():
    """Mixed precision: bf16 activations, fp32 master head weight; grads keep each input's dtype."""
    h, W, t, w = _data(N=32, D=16, V=50, dtype=torch.float32)
    ref = naive_linear_cross_entropy(h, W, t, w)
    ref.backward()
    gh, gW = h.grad.clone(), W.grad.clone()
    hb = h.detach().bfloat16().requires_grad_()
    W.grad = None
    got, _ = fused_linear_cross_entropy(hb, W, t, w, chunk=8)
    got.backward()
    assert hb.grad.dtype == torch.bfloat16 and W.grad.dtype == torch.float32
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(hb.grad.float(), gh, rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(W.grad, gW, rtol=5e-2, atol=5e-3)
