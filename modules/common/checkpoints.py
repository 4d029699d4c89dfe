"""Checkpoints from user paths, loaded safely: `torch.load(weights_only=True)` only (a crafted
pickle cannot run code), then a check that the file is the kind of checkpoint the caller needs.

A refused or unreadable file, or one of another kind, is a `ConfigError` of one line naming the
path, what the file is and what was expected. Classes a project checkpoint legitimately holds
besides tensors and builtins (e.g. the tokenizer's config dataclass in its hyper-parameters) are
allow-listed by their owners with `torch.serialization.add_safe_globals`.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from modules.common.errors import ConfigError

KINDS = {
    "tokenizer": "a tokenizer checkpoint (TokenizerModule)",
    "ar": "an AR checkpoint (ARModule or a sampler checkpoint)",
    "refiner": "a refiner checkpoint (RefinerModule)",
    "lightning": "a Lightning checkpoint of another module",
    "unknown": "a dict of unknown layout",
}
# Lightning class names -> kind (hyper_parameters["_class_path"] written by the CLI).
_CLASS_KINDS = {"TokenizerModule": "tokenizer", "ARModule": "ar", "RefinerModule": "refiner"}


def checkpoint_kind(ckpt: Any) -> str:
    """'tokenizer', 'ar', 'lightning' (another LightningModule) or 'unknown', from the layout."""
    if not isinstance(ckpt, dict):
        return "unknown"
    if "ar_config" in ckpt or "ar_vocab" in ckpt:
        return "ar"
    if "refiner" in ckpt:  # written by RefinerModule.on_save_checkpoint
        return "refiner"
    hp = ckpt.get("hyper_parameters") or {}
    class_path = str(hp.get("_class_path") or "")
    if class_path:
        return _CLASS_KINDS.get(class_path.rsplit(".", 1)[-1], "lightning")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        return "unknown"
    prefixes = {str(k).split(".", 1)[0] for k in state}
    if "tokenizer" in prefixes and "model" not in prefixes:  # TokenizerModule: tokenizer.*, train_steps
        return "tokenizer"
    if prefixes == {"model"}:  # ARModule: model.*
        return "ar"
    return "lightning"


def describe(kind: str) -> str:
    return KINDS.get(kind, f"a {kind} checkpoint")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def load_checkpoint(path: str | Path, expected_kind: str | tuple[str, ...] | None, *, what: str = "checkpoint",
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint at `path` (a dict), loaded with `weights_only=True`; `expected_kind`
    ('tokenizer', 'ar', a tuple of kinds or None for any) is checked. `what` names the option the
    path came from in messages (e.g. "--ckpt_path")."""
    p = Path(path).expanduser()
    expected = (expected_kind,) if isinstance(expected_kind, str) else tuple(expected_kind or ())
    wanted = " or ".join(describe(k) for k in expected) or "a PyTorch checkpoint"
    if not p.is_file():
        raise ConfigError(f"{what} {p} not found; expected {wanted}")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(p)
        except Exception:  # noqa: BLE001 - not a zip checkpoint at all
            unsafe = []
        if not unsafe:
            raise ConfigError(f"{what} {p} is not a readable PyTorch checkpoint ({_first_line(err)}); "
                              f"expected {wanted}") from None
        raise ConfigError(f"{what} {p} holds pickled {', '.join(unsafe[:3])}, which are refused (loading them "
                          f"could run code); expected {wanted} written by this project") from None
    except Exception as err:  # noqa: BLE001 - truncated, not a zip archive, not torch at all
        raise ConfigError(f"{what} {p} is not a readable PyTorch checkpoint ({type(err).__name__}: "
                          f"{_first_line(err)}); expected {wanted}") from None
    kind = checkpoint_kind(ckpt)
    if expected and kind not in expected:
        raise ConfigError(f"{what} {p} is {describe(kind)}, expected {wanted}; pass the right file")
    return ckpt
