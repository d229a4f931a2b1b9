"""Safe loading of shipped weights: safetensors only (or weights-only torch files), sha256 checked.

A weights file is never unpickled: safetensors holds raw tensors, and `.pt` files go through
`torch.load(weights_only=True)`. Every file named in `models/manifest.json` is hashed before it
is parsed, so a tampered, truncated or swapped file fails with `ModelLoadError` naming the file,
instead of loading garbage or running code.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from efs_ros.nets.models import build_model

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


class ModelLoadError(RuntimeError):
    """A model file is missing, fails its checksum, or does not fit the architecture."""


def default_models_dir() -> Path:
    """models/ of this checkout, $EFS_MODELS_DIR, or the installed share/efs_ros/models."""
    env = os.environ.get("EFS_MODELS_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "models"
    if (repo / MANIFEST_NAME).exists():
        return repo
    try:  # installed with colcon: data_files put models/ under share/efs_ros
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory("efs_ros")) / "models"
        if (share / MANIFEST_NAME).exists():
            return share
    except Exception:  # noqa: BLE001 - ament index absent or package not installed
        pass
    return repo


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; shipped files must stay readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(models_dir: str | Path | None = None) -> dict:
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    path = models_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"no model manifest at {path} (run `make train`)") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"model manifest {path} is not valid JSON: {exc}") from None
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("models"), dict):
        raise ModelLoadError(f"model manifest {path} has an unknown format")
    return manifest


def write_manifest(models_dir: str | Path, manifest: dict) -> None:
    manifest = {"format": MANIFEST_FORMAT, **{k: v for k, v in manifest.items() if k != "format"}}
    atomic_write_bytes(Path(models_dir) / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())


def manifest_entry(name: str, models_dir: str | Path | None = None) -> dict:
    entry = read_manifest(models_dir)["models"].get(name)
    if entry is None:
        raise ModelLoadError(f"model {name!r} is not in the manifest of {models_dir or default_models_dir()}")
    return entry


def read_verified(path: str | Path, expected_sha256: str | None) -> bytes:
    """Read the whole file once, hash those bytes and return them: what is parsed afterwards
    is exactly what was checked (no window for the file to change in between)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file missing: {path}")
    if not expected_sha256:
        raise ModelLoadError(f"no sha256 recorded for {path.name}; refusing to load an unverified file")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise ModelLoadError(
            f"sha256 mismatch for {path.name}: file {digest[:16]}..., manifest {expected_sha256[:16]}... "
            "(file tampered with, truncated or replaced)"
        )
    return data


def verify_file(path: str | Path, expected_sha256: str | None) -> str:
    """Hash the file and compare with the manifest; returns the digest."""
    read_verified(path, expected_sha256)
    return expected_sha256


def save_state_dict(model: torch.nn.Module, path: str | Path) -> str:
    """Write the weights as safetensors (atomically); returns the file's sha256."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata={"format": "pt"}))
    return sha256_file(path)


def _parse_tensors(name: str, data: bytes) -> dict[str, torch.Tensor]:
    if name.endswith(".safetensors"):
        from safetensors.torch import load

        try:
            return load(data)
        except Exception as exc:  # noqa: BLE001 - SafetensorError and friends: a malformed file
            raise ModelLoadError(f"cannot parse {name} as safetensors: {exc}") from None
    if name.endswith((".pt", ".pth")):
        import io

        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
            raise ModelLoadError(f"cannot load {name} with weights_only=True: {exc}") from None
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ModelLoadError(f"{name} does not hold a plain state dict of tensors")
        return obj
    raise ModelLoadError(f"{name}: only .safetensors or weights-only .pt files are loaded")


def load_state_dict_into(model: torch.nn.Module, path: str | Path, expected_sha256: str | None) -> None:
    """Verify, parse and load; every missing, extra or mis-shaped tensor is named."""
    path = Path(path)
    tensors = _parse_tensors(path.name, read_verified(path, expected_sha256))
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    wrong = [
        f"{k} {tuple(tensors[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)
    ]
    if missing or extra or wrong:
        parts = []
        if wrong:
            parts.append("wrong shapes: " + "; ".join(wrong[:4]) + (" ..." if len(wrong) > 4 else ""))
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if extra:
            parts.append(f"unexpected {len(extra)} tensors (e.g. {extra[0]})")
        raise ModelLoadError(f"{path.name} does not fit {type(model).__name__}: " + ", ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})


def load_model(name: str, models_dir: str | Path | None = None, device: str = "cpu") -> torch.nn.Module:
    """Build `name` from the manifest's config and load its verified weights (eval mode)."""
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    entry = manifest_entry(name, models_dir)
    try:
        model = build_model(name, entry.get("config"))
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"manifest config for {name!r} does not build: {exc}") from None
    load_state_dict_into(model, models_dir / entry["weights"], entry.get("sha256"))
    return model.to(device).eval()


def onnx_bytes(name: str, models_dir: str | Path | None = None) -> tuple[bytes, str]:
    """The verified ONNX model of `name` and its sha256 (the key for engine caches)."""
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    entry = manifest_entry(name, models_dir)
    if "onnx" not in entry:
        raise ModelLoadError(f"model {name!r} has no ONNX export in the manifest (run export)")
    return read_verified(models_dir / entry["onnx"], entry.get("onnx_sha256")), entry["onnx_sha256"]


def save_training_checkpoint(path: str | Path, state: dict) -> None:
    """Resumable training state (models, optimisers, step, rng, history) in a weights-only file."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_training_checkpoint(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot resume from {path}: {exc}") from None
