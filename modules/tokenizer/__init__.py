"""Dual-codebook multi-scale VQ tokenizer (TokenFlow lineage, NextFlow settings)."""
from modules.tokenizer.module import TokenizerModule
from modules.tokenizer.quantizer import DualCodebookQuantizer, codebook_stats
from modules.tokenizer.tokenizer import MultiScaleCodes, MultiScaleTokenizer, TokenizerConfig

__all__ = ["TokenizerModule", "MultiScaleTokenizer", "MultiScaleCodes", "TokenizerConfig",
           "DualCodebookQuantizer", "codebook_stats", "load_tokenizer"]


def load_tokenizer(path: str, map_location: str = "cpu") -> TokenizerModule:
    """A trained TokenizerModule from a Lightning checkpoint (eval mode); clear error when missing."""
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"tokenizer checkpoint not found at {p}; train one with `python main.py fit --config "
            f"configs/experiment/tokenizer_shapes_stage3.yaml` (after stages 1-2) or pass the right path")
    module = TokenizerModule.load_from_checkpoint(str(p), map_location=map_location, init_ckpt=None, teacher="none",
                                                  val_oracle=False, rfid_extractor=None, weights_only=False)
    return module.eval()
