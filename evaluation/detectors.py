"""Detector and colour-classifier backends for the evaluators: one interface, loaded by name.

A detector is anything with `detect(image: H x W x 3 uint8) -> list[dict]` returning
{"class", "score", "bbox" [x0, y0, x1, y1] pixels, "mask" bool H x W or None, "color" str|None}
(notes/CONTRACTS.md). A colour classifier is anything with
`classify(image, detections, class_name) -> list[str]` (one colour name per detection).

Backends are chosen in config by a registry name ("oracle", "detection", "clip") or a
`package.module.ClassName` path (built by evaluation.backends.load_backend, which
checks that path-like arguments exist locally), with keyword arguments:
    detector: {class_path: oracle}
    detector: {class_path: my_pkg.detectors.MyDetector, init_args: {weights: /models/x.pth}}
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from evaluation.backends import load_backend


@runtime_checkable
class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[dict]: ...


@runtime_checkable
class ColorClassifier(Protocol):
    def classify(self, image: np.ndarray, detections: list[dict], class_name: str) -> list[str]: ...


class DetectionColor:
    """Colour backend that reads the detector's own per-detection "color" (the oracle's default)."""

    def classify(self, image: np.ndarray, detections: list[dict], class_name: str) -> list[str]:
        return [str(d.get("color")) for d in detections]


def _oracle(**kwargs: Any) -> Detector:
    from shapes.oracle import OracleConfig, OracleDetector
    return OracleDetector(OracleConfig(**kwargs)) if kwargs else OracleDetector()


def _clip(**kwargs: Any) -> ColorClassifier:
    from evaluation.clip_color import ClipColorClassifier
    return ClipColorClassifier(**kwargs)


DETECTORS: dict[str, Callable[..., Detector]] = {"oracle": _oracle}
# Official GenEval scores real photos with Mask2Former (Swin-S, COCO) through mmdetection, which is
# not a dependency here: a name that users may try gets an answer saying how to plug it in.
UNAVAILABLE = {"mask2former": "GenEval's Mask2Former detector needs mmdetection (pip install mmdet) and the "
                              "weights mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth on a local path; "
                              "wrap mmdet.apis.init_detector / inference_detector in a class with "
                              "detect(image) -> list[dict] and name it by class path (init_args: the local "
                              "config and checkpoint paths); the Shapes world uses detector 'oracle'"}
COLOR_CLASSIFIERS: dict[str, Callable[..., ColorClassifier]] = {"detection": DetectionColor, "clip": _clip}


def _build(spec: Any, registry: dict[str, Callable[..., Any]], method: str, kind: str) -> Any:
    if spec is None:
        return None
    if hasattr(spec, method):          # already an instance
        return spec
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{kind} spec must be a name, a dict with class_path/init_args or an object with "
                         f"{method}(); got {spec!r}")
    name, kwargs = spec["class_path"], dict(spec.get("init_args") or {})
    if name in registry:
        return registry[name](**kwargs)
    if name in UNAVAILABLE:
        raise ValueError(f"{kind} {name!r} is not built in: {UNAVAILABLE[name]}")
    if "." not in name:
        raise ValueError(f"unknown {kind} {name!r}; use one of {', '.join(registry)} "
                         f"or a module.ClassName path")
    # Class paths go through the shared loader: local-path checks, clear BackendError messages.
    return load_backend(name, kwargs, method=method)


def load_detector(spec: Any = "oracle") -> Detector:
    """A detector from a registry name, a {class_path, init_args} dict, or an instance."""
    return _build(spec if spec is not None else "oracle", DETECTORS, "detect", "detector")


def load_color_classifier(spec: Any = "detection") -> ColorClassifier:
    """A colour classifier from a registry name, a {class_path, init_args} dict, or an instance."""
    return _build(spec if spec is not None else "detection", COLOR_CLASSIFIERS, "classify",
                  "colour classifier")
