"""One interface for running EvRefocusNet / EvMergeNet / EvRestoreNet, whatever executes them.

Inputs and outputs are numpy float32 in the layouts of the pipeline hooks
(`PipelineConfig.refocus_net` / `merge_net`), so a backend's bound methods plug in directly.
Sizes that are not multiples of 4 are padded here by edge replication and cropped back, so
every backend (and the exported graphs) only ever sees valid sizes. Mono inputs are run as
grey RGB (a valid colour image) and reduced back to one channel.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import numpy as np

from efs_ros.nets.models import N_BINS, SIZE_MULTIPLE

log = logging.getLogger("efs_ros.infer")

NET_CHANNELS = 3

PER_SLICE_NETS = ("evrefocusnet", "evmergenet")
RESTORE_NET = "evrestorenet"


def shipped_nets(models_dir=None) -> tuple[str, ...]:
    """The nets a backend opens: the per-slice pair always (a missing one is a load error, as
    before), the restoration net when the manifest has it."""
    from efs_ros.nets.checkpoint import read_manifest

    return PER_SLICE_NETS + ((RESTORE_NET,) if RESTORE_NET in read_manifest(models_dir)["models"] else ())


def check_trained_response(models_dir=None) -> str | None:
    """Warn (and return the message) when the pipeline builds the nets' inputs differently from
    training (another sensor response or event filter): they would be off-distribution."""
    from efs_ros.nets.checkpoint import read_manifest
    from efs_ros.nets.data import pipeline_event_filter_us, pipeline_response, response_spec

    info = read_manifest(models_dir).get("info", {})
    problems = []
    now = response_spec(pipeline_response())
    if info.get("response") is not None and info["response"] != now:
        problems.append(f"sensor response {info['response']} (pipeline now {now})")
    now_f = pipeline_event_filter_us()
    if info.get("event_filter_us") is not None and float(info["event_filter_us"]) != now_f:
        problems.append(f"event filter {info['event_filter_us']} us (pipeline now {now_f} us)")
    if not problems:
        return None
    msg = "nets were trained with " + " and ".join(problems) + "; retrain (make train)"
    log.warning(msg)
    return msg


class BackendUnavailableError(RuntimeError):
    """The backend's runtime, device or model files are not usable on this machine."""


def pad_to_multiple(x: np.ndarray, multiple: int = SIZE_MULTIPLE) -> tuple[np.ndarray, tuple[int, int]]:
    """Edge-pad the last two axes up to a multiple; returns (padded, original (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    pad = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(x, pad, mode="edge"), (h, w)


def crop_to(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return x[..., : hw[0], : hw[1]]


def _as_f32(name: str, x, ndim: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim not in ndim:
        raise ValueError(f"{name}: expected {' or '.join(map(str, ndim))} dims, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name}: expected a numeric array, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


class InferenceBackend(ABC):
    """Runs the two nets; subclasses implement the batch-first `_run_*` on padded arrays."""

    name: str = "abstract"

    # --- subclass hooks: float32 contiguous, H and W multiples of SIZE_MULTIPLE, 3 channels
    @abstractmethod
    def _run_refocus(self, log_frame: np.ndarray, event_bins: np.ndarray) -> np.ndarray:
        """[B,3,H,W], [B,64,H,W] -> [B,3,H,W]."""

    @abstractmethod
    def _run_merge(self, stack: np.ndarray, event_stacks: np.ndarray) -> np.ndarray:
        """[1,N,3,H,W], [1,N,H,W] -> [1,N,H,W] softmax weights."""

    def _run_restore(self, features: np.ndarray) -> np.ndarray:
        """[1,C,H,W] restore features -> [1,3,H,W] log-response image (backends that load it)."""
        raise BackendUnavailableError(f"{self.name}: no restoration net (evrestorenet) shipped")

    @property
    def has_restore(self) -> bool:
        """Whether the models folder ships the restoration net (the single-pass learned path)."""
        return RESTORE_NET in getattr(self, "nets", ())

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to free
        """Release device memory / sessions (optional)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # --- public API, matching the pipeline hooks
    def refocus(self, log_frame, event_bins) -> np.ndarray:
        """log_frame [C,H,W] (or [B,C,H,W]), event_bins [64,H,W] (or [B,64,H,W]) -> log image.

        C is 1 or 3; the output has the input's layout and channel count.
        """
        lf = _as_f32("log_frame", log_frame, (3, 4))
        ev = _as_f32("event_bins", event_bins, (3, 4))
        single = lf.ndim == 3
        if single:
            lf, ev = lf[None], ev[None]
        if ev.ndim != 4 or ev.shape != (lf.shape[0], N_BINS, *lf.shape[2:]):
            raise ValueError(f"event_bins shape {ev.shape} does not fit log_frame {lf.shape} ({N_BINS} bins)")
        c = lf.shape[1]
        if c not in (1, NET_CHANNELS):
            raise ValueError(f"log_frame must have 1 or 3 channels, got {c}")
        if c == 1:
            lf = np.repeat(lf, NET_CHANNELS, axis=1)
        lf, hw = pad_to_multiple(lf)
        ev, _ = pad_to_multiple(ev)
        out = crop_to(self._run_refocus(lf, ev), hw)
        if c == 1:
            out = out.mean(axis=1, keepdims=True)
        out = np.ascontiguousarray(out, dtype=np.float32)
        return out[0] if single else out

    def merge_weights(self, stack, event_stacks) -> np.ndarray:
        """stack [N,C,H,W] linear in [0,1], event_stacks [N,H,W] -> weights [N,H,W] (sum 1 over N)."""
        st = _as_f32("stack", stack, (4,))
        ev = _as_f32("event_stacks", event_stacks, (3,))
        n, c = st.shape[:2]
        if ev.shape != (n,) + st.shape[2:]:
            raise ValueError(f"event_stacks shape {ev.shape} does not fit stack {st.shape}")
        if c not in (1, NET_CHANNELS):
            raise ValueError(f"stack must have 1 or 3 channels, got {c}")
        if n == 1:
            return np.ones(ev.shape, np.float32)
        if c == 1:
            st = np.repeat(st, NET_CHANNELS, axis=1)
        st, hw = pad_to_multiple(st)
        ev, _ = pad_to_multiple(ev)
        w = crop_to(self._run_merge(st[None], ev[None])[0], hw)
        return np.ascontiguousarray(w, dtype=np.float32)

    def restore(self, features) -> np.ndarray:
        """core.restore features [C,H,W] -> corrected log-response RGB [3,H,W]."""
        f = _as_f32("features", features, (3,))
        f, hw = pad_to_multiple(f)
        out = crop_to(self._run_restore(f[None])[0], hw)
        return np.ascontiguousarray(out, dtype=np.float32)

    def merge(self, stack, event_stacks) -> np.ndarray:
        """The fused image [C,H,W]: the weighted sum with the same weights for every channel."""
        w = self.merge_weights(stack, event_stacks)
        return np.einsum("nchw,nhw->chw", np.asarray(stack, np.float32), w)
