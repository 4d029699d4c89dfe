"""Dual-codebook multi-scale VQ tokenizer (TokenFlow lineage, NextFlow settings)."""
import torch

from modules.tokenizer.module import TokenizerModule
from modules.tokenizer.quantizer import DualCodebookQuantizer, codebook_stats
from modules.tokenizer.tokenizer import MultiScaleCodes, MultiScaleTokenizer, TokenizerConfig

__all__ = ["TokenizerModule", "MultiScaleTokenizer", "MultiScaleCodes", "TokenizerConfig",
           "DualCodebookQuantizer", "codebook_stats", "load_tokenizer", "checkpoint_fingerprint"]

# Tokenizer checkpoints written outside the CLI keep this dataclass in their hyper-parameters; it
# holds plain values only, so `weights_only=True` loading may rebuild it.
torch.serialization.add_safe_globals([TokenizerConfig])


def load_tokenizer(path: str, map_location: str = "cpu") -> TokenizerModule:
    """A trained TokenizerModule from a Lightning checkpoint (eval mode); clear error when missing.
    Loaded with `weights_only=True`; a file that is not a tokenizer checkpoint is a one-line
    ConfigError naming the path and what it is."""
    from pathlib import Path

    from modules.common.checkpoints import load_checkpoint

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"tokenizer checkpoint not found at {p}; train one with `python main.py fit --config "
            f"configs/experiment/tokenizer_shapes_stage3.yaml` (after stages 1-2) or pass the right path")
    load_checkpoint(p, "tokenizer", what="tokenizer checkpoint")  # safe load + kind check, one-line errors
    module = TokenizerModule.load_from_checkpoint(str(p), map_location=map_location, init_ckpt=None, teacher="none",
                                                  val_oracle=False, rfid_extractor=None, weights_only=True)
    return module.eval()


def checkpoint_fingerprint(path: str) -> str:
    """First 16 hex digits of the checkpoint file's SHA-256: pretokenised shards and AR checkpoints
    record it, so codes are never read with a tokenizer other than the one that wrote them."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
