"""ONNX export with dynamic height and width (and slice count for the merge net).

The exported graphs take batch-first tensors: refocus (log_frame [B,C,H,W], event_bins
[B,64,H,W]) -> log_image [B,C,H,W]; merge (stack [1,N,C,H,W], event_stacks [1,N,H,W]) ->
weights [1,N,H,W]. H and W must be multiples of 4 (the backends pad). The legacy TorchScript
exporter is used because the dynamo exporter needs onnxscript, which is not installed.

    python -m efs_ros.nets.export [--models-dir models]   # re-export from the shipped weights
"""
from __future__ import annotations

import argparse
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from efs_ros.nets.checkpoint import (
    MANIFEST_NAME,
    atomic_write_bytes,
    default_models_dir,
    load_model,
    read_manifest,
    save_state_dict,
    sha256_file,
    write_manifest,
)
from efs_ros.nets.models import EvMergeNet, EvRefocusNet, EvRestoreNet, count_parameters

OPSET = 17
ONNX_TOLERANCE = {"evrefocusnet": 1e-3, "evmergenet": 1e-4, "evrestorenet": 1e-3}
"""Max abs difference ORT-CPU vs PyTorch: log intensity (refocus) and softmax weights (merge)."""

IO_NAMES = {
    "evrefocusnet": (["log_frame", "event_bins"], ["log_image"]),
    "evmergenet": (["stack", "event_stacks"], ["weights"]),
    "evrestorenet": (["features"], ["log_image"]),
}
EXPORT_NAMES = {EvRefocusNet: "evrefocusnet", EvMergeNet: "evmergenet", EvRestoreNet: "evrestorenet"}


def example_inputs(model: torch.nn.Module, h: int = 32, w: int = 48, n: int = 3, seed: int = 0):
    """Random inputs of the right layout, for tracing and for parity checks."""
    g = torch.Generator().manual_seed(seed)
    c = model.channels
    if isinstance(model, EvRestoreNet):
        feats = torch.rand(1, model.in_channels, h, w, generator=g)
        feats[:, :6] = feats[:, :6] * 3.0 + 2.0  # log-response images
        return (feats,)
    if isinstance(model, EvRefocusNet):
        return (
            torch.rand(1, c, h, w, generator=g) * 3.0 - 3.5,
            torch.randint(-2, 3, (1, model.n_bins, h, w), generator=g).float(),
        )
    return (
        torch.rand(1, n, c, h, w, generator=g),
        torch.randint(-3, 4, (1, n, h, w), generator=g).float(),
    )


def export_bytes(model: torch.nn.Module) -> bytes:
    """Serialise `model` to ONNX with dynamic H/W (and B or N) axes."""
    name = EXPORT_NAMES.get(type(model))
    if name is None:
        raise TypeError(f"cannot export {type(model).__name__}")
    inputs, outputs = IO_NAMES[name]
    if name == "evrestorenet":
        dyn = {inputs[0]: {2: "height", 3: "width"}, outputs[0]: {2: "height", 3: "width"}}
    elif name == "evrefocusnet":
        dyn = {inputs[0]: {0: "batch", 2: "height", 3: "width"},
               inputs[1]: {0: "batch", 2: "height", 3: "width"},
               outputs[0]: {0: "batch", 2: "height", 3: "width"}}
    else:
        dyn = {inputs[0]: {1: "slices", 3: "height", 4: "width"},
               inputs[1]: {1: "slices", 2: "height", 3: "width"},
               outputs[0]: {1: "slices", 2: "height", 3: "width"}}
    model = model.eval().cpu()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            model, example_inputs(model), buf, dynamo=False, opset_version=OPSET,
            input_names=inputs, output_names=outputs, dynamic_axes=dyn, do_constant_folding=True,
        )
    return buf.getvalue()


def export_onnx(model: torch.nn.Module, path: str | Path) -> str:
    """Export, check with onnx.checker, write atomically; returns the file's sha256."""
    import onnx

    data = export_bytes(model)
    onnx.checker.check_model(onnx.load_from_string(data))
    atomic_write_bytes(path, data)
    return sha256_file(path)


def max_abs_difference(model: torch.nn.Module, onnx_file: str | Path | bytes,
                       sizes=((32, 48), (60, 84))) -> float:
    """Largest |ORT - torch| over random inputs at several H x W (CPU provider)."""
    import onnxruntime as ort

    src = onnx_file if isinstance(onnx_file, bytes) else str(onnx_file)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    worst = 0.0
    for k, (h, w) in enumerate(sizes):
        args = example_inputs(model, h, w, n=2 + k, seed=k)
        with torch.no_grad():
            ref = model(*args).numpy()
        got = sess.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def export_models_dir(models_dir: str | Path | None = None) -> dict:
    """Export every net in the manifest next to its weights and record the ONNX sha256."""
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    manifest = read_manifest(models_dir)
    for name, entry in manifest["models"].items():
        model = load_model(name, models_dir)
        fname = f"{name}.onnx"
        entry["onnx"] = fname
        entry["onnx_sha256"] = export_onnx(model, models_dir / fname)
        entry["onnx_opset"] = OPSET
        entry["onnx_max_abs_diff"] = max_abs_difference(model, models_dir / fname)
        entry["onnx_tolerance"] = ONNX_TOLERANCE[name]
    write_manifest(models_dir, manifest)
    return manifest


def publish(models: dict[str, torch.nn.Module], models_dir: str | Path, info: dict | None = None,
            onnx: bool = True) -> dict:
    """Write each net as safetensors + manifest entry (sha256, config), then its ONNX export.

    `info` (training data, steps, metrics) is stored in the manifest under "info". Entries of
    nets not in `models` are kept.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        manifest = read_manifest(models_dir) if (models_dir / MANIFEST_NAME).exists() else {"models": {}}
    except Exception:  # noqa: BLE001 - an unreadable old manifest is simply replaced
        manifest = {"models": {}}
    for name, model in models.items():
        fname = f"{name}.safetensors"
        manifest["models"][name] = {
            "weights": fname,
            "sha256": save_state_dict(model, models_dir / fname),
            "config": dict(model.config),
            "parameters": count_parameters(model),
        }
    if info is not None:
        manifest["info"] = info
    write_manifest(models_dir, manifest)
    return export_models_dir(models_dir) if onnx else manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", default=None)
    args = ap.parse_args(argv)
    manifest = export_models_dir(args.models_dir)
    for name, e in manifest["models"].items():
        print(f"{name}: {e['onnx']} sha256 {e['onnx_sha256'][:16]}... "
              f"max|ort-torch| {e['onnx_max_abs_diff']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
