"""Load a model backend (VQA model, VLM judge, ...) by class path, from local files only.

Benchmarks take their neural parts as injected backends (DESIGN.md, "Evaluators"). A backend is
configured like a Lightning CLI component:

    class_path: my_package.vqa.MyVQA        # importable "module.ClassName"
    init_args: {weights: /models/mplug-large, device: cuda}

`load_backend` imports the class, checks that every init argument that names a file or directory
(keys like `weights`, `path`, `checkpoint`, `pretrained`, `*_path`, `*_dir`) exists locally, and
checks that the instance has the method the benchmark calls. Each failure raises BackendError with
one line naming the offending value: nothing is downloaded and nothing is silently replaced.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

PATH_KEYS = ("weights", "path", "checkpoint", "ckpt", "pretrained", "model_path", "model_dir")


class BackendError(ValueError):
    """A backend that cannot be built from its config (missing class, missing local weights)."""


def import_class(class_path: str) -> type:
    """`package.module.ClassName` -> the class; BackendError naming what could not be imported."""
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name or not class_name:
        raise BackendError(f"class_path {class_path!r} must look like 'package.module.ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise BackendError(f"class_path {class_path!r}: module {err.name!r} is not importable "
                           f"(install it or fix the path)") from err
    try:
        return getattr(module, class_name)
    except AttributeError as err:
        raise BackendError(f"class_path {class_path!r}: module {module_name!r} has no "
                           f"attribute {class_name!r}") from err


def is_path_key(key: str) -> bool:
    key = key.lower()
    return key in PATH_KEYS or key.endswith(("_path", "_dir", "_file", "_ckpt", "_weights"))


def check_local_paths(init_args: Mapping[str, Any], owner: str) -> None:
    """Every path-like init argument must exist on this machine (weights are never downloaded)."""
    for key, value in init_args.items():
        if value is None or not isinstance(value, (str, Path)) or not is_path_key(key):
            continue
        if "://" in str(value):
            raise BackendError(f"{owner}: init_args.{key}={value!r} is a URL; weights must be a "
                               f"local path (download them elsewhere and copy them here)")
        if not Path(value).expanduser().exists():
            raise BackendError(f"{owner}: init_args.{key} -> local weights path {value!r} not found; "
                               f"point it at the downloaded model files")


def load_backend(class_path: str, init_args: Mapping[str, Any] | None = None, *,
                 method: str | None = None) -> Any:
    """Instantiate `class_path(**init_args)` after checking local paths; require `method`."""
    init_args = dict(init_args or {})
    cls = import_class(class_path)
    check_local_paths(init_args, class_path)
    try:
        instance = cls(**init_args)
    except (FileNotFoundError, OSError) as err:
        raise BackendError(f"{class_path}: could not load its local files: {err}") from err
    if method is not None and not callable(getattr(instance, method, None)):
        raise BackendError(f"{class_path} has no method {method}(...) that this benchmark calls")
    return instance
