"""Load the language-model weights of a local Qwen2.5 / Qwen2.5-VL safetensors folder into
an `ARDecoder` (NF §3.1: the decoder starts from Qwen2.5-VL-7B's LLM; its ViT is dropped).

Only local folders are read (config.json + *.safetensors); nothing is downloaded. The text rows
of the embedding/head are copied; visual-code and special rows keep their own initialisation
(`ARDecoder.init_visual_from_codebook` sets the visual ones).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from modules.ar.model import ARDecoder

# HF key prefixes of the LLM across Qwen2 / Qwen2.5-VL releases -> canonical "model." / "lm_head."
_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
             ("language_model.lm_head.", "lm_head."))
_SKIP = re.compile(r"^(model\.)?(visual|vision_tower|multi_modal_projector)\.")
_CFG_CHECKS = (("hidden_size", "n_embd"), ("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head"),
               ("num_key_value_heads", "n_query_groups"), ("intermediate_size", "intermediate_size"))


def _canonical(key: str) -> str | None:
    if _SKIP.match(key):
        return None
    for old, new in _PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _target_name(key: str) -> str | None:
    """HF canonical name -> our parameter name (module names already follow HF's)."""
    if key.startswith("model.layers."):
        return "blocks." + key[len("model.layers."):]
    return {"model.embed_tokens.weight": "wte.weight", "model.norm.weight": "norm.weight",
            "lm_head.weight": "lm_head.weight"}.get(key)


def _check_config(model: ARDecoder, folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        return {}
    cfg = json.loads(path.read_text())
    cfg = cfg.get("text_config", cfg)  # Qwen2.5-VL nests the LLM's config in newer releases
    for hf, ours in _CFG_CHECKS:
        if hf in cfg and cfg[hf] != getattr(model.config, ours):
            raise ValueError(f"checkpoint {path} has {hf}={cfg[hf]} but the AR config has {ours}="
                             f"{getattr(model.config, ours)}; use ARConfig.from_name('qwen2.5-7b') or matching sizes")
    return cfg


@torch.no_grad()
def load_qwen2_weights(model: ARDecoder, folder: str | Path) -> dict:
    """Copy a Qwen2(.5)(-VL) LLM into `model`. Returns {"loaded": n, "skipped": [...]}.

    Raises FileNotFoundError naming the folder when it or its safetensors files are missing, and
    ValueError naming both values on a shape/vocabulary mismatch or missing tensors."""
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no *.safetensors files found in {folder}; point `weights` at a local "
                                "Qwen2.5 / Qwen2.5-VL checkpoint folder (nothing is downloaded)")
    hf_cfg = _check_config(model, folder)
    c, params = model.config, dict(model.named_parameters())
    needed = {n for n in params if n.startswith("blocks.")} | {"wte.weight", "norm.weight"}
    loaded, skipped, head_seen = set(), [], False
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                canon = _canonical(key)
                name = _target_name(canon) if canon else None
                if name is None:
                    skipped.append(key)
                    continue
                t = sf.get_tensor(key)
                if name in ("wte.weight", "lm_head.weight"):
                    if t.shape[0] != c.text_vocab_size or t.shape[1] != c.n_embd:
                        raise ValueError(f"{key} in {f} has shape {tuple(t.shape)} but the AR config expects "
                                         f"(text_vocab_size, n_embd) = ({c.text_vocab_size}, {c.n_embd})")
                    head_seen |= name == "lm_head.weight"
                    if name == "lm_head.weight" and model.lm_head is None:
                        raise ValueError(f"{f} has an untied lm_head but the AR config ties embeddings; "
                                         "set tie_embeddings: false")
                    params[name][: c.text_vocab_size].copy_(t)
                elif name in params:
                    if params[name].shape != t.shape:
                        raise ValueError(f"{key} in {f} has shape {tuple(t.shape)}, model expects "
                                         f"{tuple(params[name].shape)} ({name})")
                    params[name].copy_(t)
                else:
                    skipped.append(key)
                    continue
                loaded.add(name)
    missing = sorted(needed - loaded)
    if missing:
        raise ValueError(f"checkpoint {folder} lacks {len(missing)} tensors the model needs, e.g. {missing[:5]}")
    if model.lm_head is not None and not head_seen:  # tied checkpoint into an untied model
        if not hf_cfg.get("tie_word_embeddings", True):
            raise ValueError(f"checkpoint {folder} has no lm_head.weight but tie_word_embeddings is false")
        model.lm_head.weight[: c.text_vocab_size].copy_(model.wte.weight[: c.text_vocab_size])
    return {"loaded": len(loaded), "skipped": skipped}
