"""PyTorch backend: the reference the other backends are checked against, and the fallback."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from efs_ros.infer.base import BackendUnavailableError, InferenceBackend, check_trained_response, shipped_nets
from efs_ros.nets.checkpoint import load_model


class TorchBackend(InferenceBackend):
    """Loads the verified safetensors weights; CPU unless `device` names a CUDA device."""

    def __init__(
        self, models_dir: str | Path | None = None, device: str = "auto", threads: int | None = None
    ):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("torch: CUDA requested but torch.cuda.is_available() is False")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.name = f"torch-{self.device.type}"
        self.nets = shipped_nets(models_dir)
        self.models = {net: load_model(net, models_dir, device=str(self.device)) for net in self.nets}
        self.response_warning = check_trained_response(models_dir)

    def _run(self, model, *arrays: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(*(torch.from_numpy(a).to(self.device) for a in arrays))
        return out.float().cpu().numpy()

    def _run_refocus(self, log_frame, event_bins):
        return self._run(self.models["evrefocusnet"], log_frame, event_bins)

    def _run_merge(self, stack, event_stacks):
        return self._run(self.models["evmergenet"], stack, event_stacks)

    def _run_restore(self, features):
        if not self.has_restore:
            return super()._run_restore(features)
        return self._run(self.models["evrestorenet"], features)
