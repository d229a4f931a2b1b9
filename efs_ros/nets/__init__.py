"""The learned half of the paper: EvRefocusNet and EvMergeNet, their training data, training,
safe loading and ONNX export. Serving (TensorRT / ONNX Runtime / PyTorch) is `efs_ros.infer`.

    from efs_ros.nets import load_model, EvRefocusNet, ModelLoadError
"""
from efs_ros.nets.checkpoint import ModelLoadError, default_models_dir, load_model, read_manifest
from efs_ros.nets.models import EvMergeNet, EvRefocusNet, build_model, count_parameters

__all__ = [
    "EvMergeNet",
    "EvRefocusNet",
    "ModelLoadError",
    "build_model",
    "count_parameters",
    "default_models_dir",
    "load_model",
    "read_manifest",
]
