"""The AR training loss: one head, weighted CE on indices, reported by modality and scale.

Vision tokens carry k_s = 1/(h_s·w_s)^α normalised to keep the total vision loss constant
(NF §4.3; weights from ScaleSchedule.loss_weights via the sequence builder); text tokens carry
1. loss = Σ w·CE / Σ w over trained tokens (or / `normalizer`: compute-budget packing divides by the
mean trained weight per micro-batch of the packing window, so that averaged over ranks and
micro-batches every sample keeps its unpacked weight; modules/common/packing.py), computed by the chunked fused linear+CE
(modules/common/fused_ce.py) on the trained rows only, so full logits never exist.
"""
from __future__ import annotations

import torch

from modules.ar.model import ARDecoder
from modules.common.sequence import IGNORE, Tokens
from modules.common.fused_ce import fused_linear_cross_entropy, naive_linear_cross_entropy


def ar_loss(model: ARDecoder, batch: Tokens, *, mask=None, fused: bool = True, chunk: int | None = None,
            backend: str = "torch", normalizer: float | None = None) -> dict:
    """Returns {"loss": differentiable scalar, "text_loss", "vision_loss" (weighted), "vision_nll"
    (unweighted mean CE per visual token: comparable across α, the ablations' likelihood metric),
    "scale_loss": {s: mean CE of scale s}, "n_text", "n_vision"} (all but "loss" detached)."""
    vocab = model.config.vocab
    h_BLC = model(**batch.model_inputs(), mask=batch.mask() if mask is None else mask, return_hidden=True)
    tgt_N, w_N = batch.target.reshape(-1), batch.weight.reshape(-1)
    sel = (tgt_N != IGNORE) & (w_N > 0)
    h_NC = h_BLC.reshape(-1, h_BLC.shape[-1])[sel]
    tgt, w = tgt_N[sel], w_N[sel]
    if fused:
        loss, ce = fused_linear_cross_entropy(h_NC, model.head_weight(), tgt, w, chunk=chunk, backend=backend)
    else:
        loss = naive_linear_cross_entropy(h_NC, model.head_weight(), tgt, w)
        with torch.no_grad():
            ce = torch.nn.functional.cross_entropy(h_NC.float() @ model.head_weight().float().T, tgt, reduction="none")
    if normalizer is not None:  # fused/naive return Σ w·CE / Σ w
        loss = loss * (w.float().sum() / normalizer)
    ce, w = ce.detach().float(), w.float()
    vis = vocab.is_visual(tgt)
    out = {"loss": loss, "n_text": int((~vis).sum()), "n_vision": int(vis.sum()), "scale_loss": {}}
    out["text_loss"] = ce[~vis].mean() if out["n_text"] else torch.tensor(float("nan"))
    out["vision_loss"] = (ce[vis] * w[vis]).sum() / w[vis].sum() if out["n_vision"] else torch.tensor(float("nan"))
    out["vision_nll"] = ce[vis].mean() if out["n_vision"] else torch.tensor(float("nan"))
    scale = batch.scale.reshape(-1)[sel]
    for s in torch.unique(scale[vis]).tolist():
        out["scale_loss"][int(s)] = ce[vis & (scale == s)].mean()
    return out
