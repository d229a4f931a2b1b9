"""PyTorch backend: the reference the other backends are checked against, and the fallback."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from efs_ros.infer.base import BackendUnavailableError, InferenceBackend, check_trained_response
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
        self.refocus_model = load_model("evrefocusnet", models_dir, device=str(self.device))
        self.merge_model = load_model("evmergenet", models_dir, device=str(self.device))
        self.response_warning = check_trained_response(models_dir)

    def _run(self, model, *arrays: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(*(torch.from_numpy(a).to(self.device) for a in arrays))
        return out.float().cpu().numpy()

    def _run_refocus(self, log_frame, event_bins):
        return self._run(self.refocus_model, log_frame, event_bins)

    def _run_merge(self, stack, event_stacks):
        return self._run(self.merge_model, stack, event_stacks)
