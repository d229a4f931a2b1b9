"""On-disk cache of serialised TensorRT engines, so a node does not rebuild on every start.

An engine is only valid for the exact TensorRT version and GPU it was built on (a stale one
fails with "Version tag does not match"), and for the ONNX model and build options it came
from. All of those go into the cache key, so a change of any of them picks a different file
and a rebuild happens exactly when needed. Beside each engine lies the sha256 of its bytes;
it is checked before deserialising, so a truncated or corrupted file is rebuilt instead of
being handed to the runtime. Writes are atomic (temporary file + rename).

Nothing here imports TensorRT: `get_or_build` takes the build and load steps as callables,
which is also how the cache is tested on machines without a GPU.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from efs_ros.nets.checkpoint import atomic_write_bytes

log = logging.getLogger("efs_ros.infer.engine_cache")

T = TypeVar("T")


def default_cache_dir() -> Path:
    env = os.environ.get("EFS_ENGINE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "efs_ros" / "engines"


def cache_key(fields: dict) -> str:
    """Stable hex key of the fields (model sha256, TensorRT version, GPU, precision, profile)."""
    canon = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()


@dataclass
class CacheOutcome:
    path: Path
    built: bool
    reason: str
    """Why it was (re)built, or 'cache hit'."""


class EngineCache:
    def __init__(self, cache_dir: str | Path | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    def paths(self, name: str, fields: dict) -> tuple[Path, Path, Path]:
        key = cache_key(fields)[:24]
        stem = self.cache_dir / f"{name}-{key}"
        return stem.with_suffix(".engine"), stem.with_suffix(".engine.sha256"), stem.with_suffix(".json")

    def _read_cached(self, engine: Path, digest_file: Path) -> tuple[bytes | None, str]:
        if not engine.exists():
            return None, "no cached engine"
        try:
            expected = digest_file.read_text().strip()
        except OSError:
            return None, "cached engine has no sha256 beside it"
        data = engine.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected:
            return None, "cached engine fails its sha256 (corrupt or partly written)"
        return data, "cache hit"

    def store(self, name: str, fields: dict, data: bytes) -> Path:
        engine, digest_file, meta = self.paths(name, fields)
        atomic_write_bytes(engine, data)
        atomic_write_bytes(digest_file, (hashlib.sha256(data).hexdigest() + "\n").encode())
        atomic_write_bytes(meta, (json.dumps(fields, indent=2, sort_keys=True, default=str) + "\n").encode())
        return engine

    def get_or_build(
        self,
        name: str,
        fields: dict,
        build: Callable[[], bytes],
        load: Callable[[bytes], T | None],
    ) -> tuple[T, CacheOutcome]:
        """Load the cached engine for these key fields, or build, store and load a new one.

        `load` returns None or raises when the runtime rejects the bytes; that also triggers
        one rebuild. A freshly built engine that still does not load is an error.
        """
        engine, digest_file, _ = self.paths(name, fields)
        data, reason = self._read_cached(engine, digest_file)
        if data is not None:
            try:
                obj = load(data)
            except Exception as exc:  # noqa: BLE001 - any runtime rejection means rebuild
                obj, reason = None, f"cached engine failed to load ({exc})"
            else:
                if obj is None:
                    reason = "cached engine failed to load"
            if obj is not None:
                log.info("%s: engine cache hit %s", name, engine.name)
                return obj, CacheOutcome(engine, False, "cache hit")
        log.info("%s: building engine (%s)", name, reason)
        data = build()
        if not data:
            raise RuntimeError(f"{name}: engine build produced nothing")
        obj = load(data)
        if obj is None:
            raise RuntimeError(f"{name}: a freshly built engine does not load")
        path = self.store(name, fields, data)
        return obj, CacheOutcome(path, True, reason)
