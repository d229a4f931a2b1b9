"""TensorRT backend: engines built from the shipped ONNX files, FP16 where the GPU has it, cached.

Engines are built once per (ONNX sha256, TensorRT version, GPU name, compute capability,
precision, shape profile) and cached by `EngineCache`; a later start deserialises the cached
engine after checking its sha256, and rebuilds only if the key changed or the engine does not
load. Device buffers and the stream come from a CUDA build of PyTorch (as on Jetson), which
avoids a second CUDA binding. Written against the TensorRT 8.6 / 10.x tensor API
(`set_input_shape`, `set_tensor_address`, `execute_async_v3`).

Shapes are dynamic within one optimisation profile: H x W up to `max_hw`, up to `max_batch`
refocus passes at once and up to `max_slices` merge slices. Larger inputs raise ValueError
naming the limit; the profile is part of the cache key.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from efs_ros.core.restore import FEATURE_CHANNELS
from efs_ros.infer.base import (
    NET_CHANNELS,
    BackendUnavailableError,
    InferenceBackend,
    check_trained_response,
    shipped_nets,
)
from efs_ros.infer.engine_cache import CacheOutcome, EngineCache
from efs_ros.nets.checkpoint import onnx_bytes
from efs_ros.nets.models import N_BINS, SIZE_MULTIPLE

log = logging.getLogger("efs_ros.infer.tensorrt")

MIN_HW = (16, 16)


def _round_up(v: int) -> int:
    return -(-int(v) // SIZE_MULTIPLE) * SIZE_MULTIPLE


def unavailable_reason() -> str | None:
    """Why this machine cannot run the TensorRT backend, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"the tensorrt Python package is not installed ({exc})"
    try:
        import torch
    except ImportError:
        return "TensorRT buffers need PyTorch with CUDA, and torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device visible to PyTorch (TensorRT needs a GPU and a CUDA build of torch)"
    return None


class TensorRTBackend(InferenceBackend):
    def __init__(
        self,
        models_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        fp16: bool = True,
        max_hw: tuple[int, int] = (720, 1280),
        opt_hw: tuple[int, int] = (260, 348),
        max_batch: int = 8,
        max_slices: int = 16,
        workspace_mb: int = 1024,
        device: int = 0,
    ):
        reason = unavailable_reason()
        if reason:
            raise BackendUnavailableError(f"tensorrt: {reason}")
        import tensorrt as trt
        import torch

        self.trt = trt
        self.torch = torch
        self.device = torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        props = torch.cuda.get_device_properties(self.device)
        self.gpu_name = props.name
        self.compute_capability = f"{props.major}.{props.minor}"
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.max_hw = (_round_up(max_hw[0]), _round_up(max_hw[1]))
        self.opt_hw = (_round_up(min(opt_hw[0], self.max_hw[0])), _round_up(min(opt_hw[1], self.max_hw[1])))
        self.max_batch = int(max_batch)
        self.max_slices = int(max_slices)
        self.workspace = int(workspace_mb) << 20
        self.cache = EngineCache(cache_dir)
        self.fp16 = bool(fp16) and (props.major, props.minor) >= (5, 3)
        self.name = f"tensorrt-{'fp16' if self.fp16 else 'fp32'}"
        self.outcomes: dict[str, CacheOutcome] = {}
        self.engines = {}
        self.contexts = {}
        self.nets = shipped_nets(models_dir)
        for net in self.nets:
            data, sha = onnx_bytes(net, models_dir)
            fields = self._key_fields(net, sha)
            engine, outcome = self.cache.get_or_build(
                net, fields, build=lambda d=data, n=net: self._build(n, d), load=self._deserialize
            )
            self.outcomes[net] = outcome
            self.engines[net] = engine
            ctx = engine.create_execution_context()
            if ctx is None:
                raise BackendUnavailableError(f"tensorrt: cannot create an execution context for {net}")
            self.contexts[net] = ctx
        self.response_warning = check_trained_response(models_dir)
        log.info("TensorRT %s on %s (sm %s): %s", trt.__version__, self.gpu_name, self.compute_capability,
                 {k: v.reason for k, v in self.outcomes.items()})

    # --- building
    def _profile_shapes(self, net: str) -> dict[str, tuple[tuple, tuple, tuple]]:
        (hmin, wmin), (ho, wo), (hm, wm) = MIN_HW, self.opt_hw, self.max_hw
        c = NET_CHANNELS
        if net == "evrefocusnet":
            return {
                "log_frame": ((1, c, hmin, wmin), (1, c, ho, wo), (self.max_batch, c, hm, wm)),
                "event_bins": ((1, N_BINS, hmin, wmin), (1, N_BINS, ho, wo),
                               (self.max_batch, N_BINS, hm, wm)),
            }
        if net == "evrestorenet":
            f = FEATURE_CHANNELS
            return {"features": ((1, f, hmin, wmin), (1, f, ho, wo), (1, f, hm, wm))}
        s = self.max_slices
        so = min(8, s)
        return {
            "stack": ((1, 2, c, hmin, wmin), (1, so, c, ho, wo), (1, s, c, hm, wm)),
            "event_stacks": ((1, 2, hmin, wmin), (1, so, ho, wo), (1, s, hm, wm)),
        }

    def _key_fields(self, net: str, onnx_sha256: str) -> dict:
        return {
            "model": net,
            "onnx_sha256": onnx_sha256,
            "tensorrt": self.trt.__version__,
            "gpu": self.gpu_name,
            "compute_capability": self.compute_capability,
            "fp16": self.fp16,
            "profile": {k: [list(s) for s in v] for k, v in self._profile_shapes(net).items()},
        }

    def _build(self, net: str, onnx_data: bytes) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        major = int(trt.__version__.split(".")[0])
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_data):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"tensorrt: cannot parse the {net} ONNX: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        if self.fp16 and getattr(builder, "platform_has_fast_fp16", True):
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in self._profile_shapes(net).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"tensorrt: building the {net} engine failed (see TensorRT log)")
        return bytes(serialized)

    def _deserialize(self, data: bytes):
        return self.runtime.deserialize_cuda_engine(data)

    # --- running
    def _check_shape(self, net: str, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self._profile_shapes(net)[name]
        if any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=True)):
            raise ValueError(
                f"tensorrt: {name} shape {shape} is outside the engine profile {lo}..{hi}; "
                "construct TensorRTBackend with a larger max_hw / max_batch / max_slices"
            )

    def _execute(self, net: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        torch = self.torch
        ctx = self.contexts[net]
        keep = []
        for name, arr in inputs.items():
            self._check_shape(net, name, arr.shape)
            t = torch.from_numpy(arr).to(self.device)
            keep.append(t)
            if not ctx.set_input_shape(name, tuple(arr.shape)):
                raise ValueError(f"tensorrt: {name} shape {arr.shape} rejected by the engine")
            ctx.set_tensor_address(name, t.data_ptr())
        out = torch.empty(tuple(ctx.get_tensor_shape(output)), dtype=torch.float32, device=self.device)
        ctx.set_tensor_address(output, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"tensorrt: {net} execution failed")
        stream.synchronize()
        return out.cpu().numpy()

    def _run_refocus(self, log_frame, event_bins):
        if log_frame.shape[0] > self.max_batch:  # split a long batch rather than fail
            parts = [self._run_refocus(log_frame[i:i + self.max_batch], event_bins[i:i + self.max_batch])
                     for i in range(0, log_frame.shape[0], self.max_batch)]
            return np.concatenate(parts)
        return self._execute("evrefocusnet", {"log_frame": log_frame, "event_bins": event_bins}, "log_image")

    def _run_merge(self, stack, event_stacks):
        return self._execute("evmergenet", {"stack": stack, "event_stacks": event_stacks}, "weights")

    def _run_restore(self, features):
        if not self.has_restore:
            return super()._run_restore(features)
        return self._execute("evrestorenet", {"features": features}, "log_image")

    def close(self) -> None:
        self.contexts.clear()
        self.engines.clear()
