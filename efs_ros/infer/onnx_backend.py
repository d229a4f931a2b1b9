"""ONNX Runtime backend: CUDA execution provider when the installed build has one, else CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from efs_ros.infer.base import BackendUnavailableError, InferenceBackend, check_trained_response, shipped_nets
from efs_ros.nets.checkpoint import onnx_bytes


def available_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


class OnnxRuntimeBackend(InferenceBackend):
    """Runs the shipped ONNX files (sha256-checked against the manifest before parsing).

    provider: "auto" (CUDA if available, else CPU), "cuda" or "cpu".
    """

    def __init__(
        self, models_dir: str | Path | None = None, provider: str = "auto", threads: int | None = None
    ):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(f"onnxruntime is not installed ({exc})") from None
        have = ort.get_available_providers()
        if provider == "auto":
            provider = "cuda" if "CUDAExecutionProvider" in have else "cpu"
        if provider == "cuda":
            if "CUDAExecutionProvider" not in have:
                raise BackendUnavailableError(f"onnxruntime has no CUDAExecutionProvider (has {have})")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif provider == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"unknown onnxruntime provider {provider!r} (auto, cuda, cpu)")
        self.name = f"onnxruntime-{provider}"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.sessions = {}
        self.nets = shipped_nets(models_dir)
        for net in self.nets:
            data, _ = onnx_bytes(net, models_dir)  # raises ModelLoadError on a bad checksum
            sess = ort.InferenceSession(data, sess_options=opts, providers=providers)
            self.sessions[net] = (sess, [i.name for i in sess.get_inputs()])
        self.response_warning = check_trained_response(models_dir)

    def _run(self, net: str, *arrays: np.ndarray) -> np.ndarray:
        sess, names = self.sessions[net]
        return sess.run(None, dict(zip(names, arrays, strict=True)))[0]

    def _run_refocus(self, log_frame, event_bins):
        return self._run("evrefocusnet", log_frame, event_bins)

    def _run_merge(self, stack, event_stacks):
        return self._run("evmergenet", stack, event_stacks)

    def _run_restore(self, features):
        if not self.has_restore:
            return super()._run_restore(features)
        return self._run("evrestorenet", features)

    def close(self) -> None:
        self.sessions.clear()
