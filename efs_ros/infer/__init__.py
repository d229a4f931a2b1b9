"""Inference backends for the learned nets behind one interface (`InferenceBackend`).

    backend = load_backend("auto")            # tensorrt > onnxruntime-cuda > onnxruntime-cpu > torch
    config = PipelineConfig(refocus_net=backend.refocus, merge_net=backend.merge_weights, ...)
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from efs_ros.infer.base import BackendUnavailableError, InferenceBackend, crop_to, pad_to_multiple
from efs_ros.nets.checkpoint import ModelLoadError

log = logging.getLogger("efs_ros.infer")

BACKEND_NAMES = ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu", "torch-cuda", "torch-cpu")
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu")
"""Fixed preference for "auto": GPU first; on CPU ONNX Runtime measured faster than PyTorch
for these nets (see `efs_ros.tools.bench_infer`)."""

__all__ = [
    "BACKEND_NAMES",
    "LEARNED_PATHS",
    "BackendUnavailableError",
    "InferenceBackend",
    "ModelLoadError",
    "crop_to",
    "load_backend",
    "pad_to_multiple",
    "pipeline_nets",
    "available_backends",
]


LEARNED_PATHS = ("restore", "slices")
"""restore: one EvRestoreNet pass over the classical image; slices: EvRefocusNet per slice and
EvMergeNet (the paper's structure, seconds per job on a CPU)."""


def pipeline_nets(backend: InferenceBackend, learned: str = "restore") -> dict:
    """PipelineConfig keyword arguments that put a backend's nets on the asked learned path
    (restore falls back to the per-slice pair when the models folder has no EvRestoreNet)."""
    if learned not in LEARNED_PATHS:
        raise ValueError(f"learned path must be one of {LEARNED_PATHS}, got {learned!r}")
    if learned == "restore" and backend.has_restore:
        return {"restore_net": backend.restore}
    return {"refocus_net": backend.refocus, "merge_net": backend.merge_weights}


def _make(name: str, models_dir, **kwargs) -> InferenceBackend:
    if name == "tensorrt":
        from efs_ros.infer.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(models_dir, **kwargs)
    if name in ("onnxruntime", "onnxruntime-cuda", "onnxruntime-cpu"):
        from efs_ros.infer.onnx_backend import OnnxRuntimeBackend

        provider = name.partition("-")[2] or "auto"
        return OnnxRuntimeBackend(models_dir, provider=provider, **kwargs)
    if name in ("torch", "torch-cuda", "torch-cpu"):
        from efs_ros.infer.torch_backend import TorchBackend

        device = name.partition("-")[2] or "auto"
        return TorchBackend(models_dir, device=device, **kwargs)
    raise ValueError(f"unknown inference backend {name!r}; choose auto or one of {BACKEND_NAMES}")


def _quick_latency(backend: InferenceBackend, hw=(64, 64), repeats: int = 3) -> float:
    rng = np.random.default_rng(0)
    lf = np.log(rng.uniform(0.05, 1.0, (3, *hw))).astype(np.float32)
    ev = rng.integers(-1, 2, (64, *hw)).astype(np.float32)
    backend.refocus(lf, ev)  # warm-up (lazy allocations, kernel selection)
    t0 = time.perf_counter()
    for _ in range(repeats):
        backend.refocus(lf, ev)
    return (time.perf_counter() - t0) / repeats


def load_backend(name: str = "auto", models_dir: str | Path | None = None, measure: bool = False,
                 **kwargs) -> InferenceBackend:
    """Open the named backend, or with "auto" the first that works in `AUTO_ORDER`.

    With measure=True, "auto" opens every available backend, times a small refocus pass on
    each and keeps the fastest. A bad model file (ModelLoadError) is never skipped silently:
    it is raised, since every backend would read the same files. kwargs go to the backend
    named explicitly (ignored for "auto").
    """
    if name != "auto":
        backend = _make(name, models_dir, **kwargs)
        log.info("inference backend: %s", backend.name)
        return backend
    opened: list[InferenceBackend] = []
    reasons = []
    for cand in AUTO_ORDER:
        try:
            backend = _make(cand, models_dir)
        except BackendUnavailableError as exc:
            reasons.append(f"{cand}: {exc}")
            continue
        except ImportError as exc:
            reasons.append(f"{cand}: {exc}")
            continue
        if not measure:
            log.info("inference backend (auto): %s; skipped: %s", backend.name, "; ".join(reasons) or "none")
            return backend
        opened.append(backend)
    if not opened:
        raise BackendUnavailableError("no inference backend available: " + "; ".join(reasons))
    timed = sorted(((_quick_latency(b), i, b) for i, b in enumerate(opened)), key=lambda x: x[:2])
    best = timed[0][2]
    for _, _, b in timed[1:]:
        b.close()
    log.info("inference backend (auto, measured): %s; %s", best.name,
             ", ".join(f"{b.name} {t * 1e3:.1f} ms" for t, _, b in timed))
    return best


def available_backends(models_dir: str | Path | None = None) -> dict[str, str | None]:
    """Each backend name -> None if it opens here, else the reason it does not."""
    out = {}
    for cand in BACKEND_NAMES:
        try:
            _make(cand, models_dir).close()
            out[cand] = None
        except (BackendUnavailableError, ImportError) as exc:
            out[cand] = str(exc)
    return out
