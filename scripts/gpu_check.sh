#!/usr/bin/env bash
# GPU checks for a machine with an NVIDIA GPU and a CUDA build of PyTorch (no ROS needed):
# the GPU tests of test_infer/test_nets (TensorRT ones run only where `tensorrt` imports),
# then the per-job latency table of every backend that opens. Logs go to ${OUT:-out/gpu_check}.
set -o pipefail
out=${OUT:-out/gpu_check}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
  nvidia-smi -L
  $py -c "import sys, torch, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__)"
  $py -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>&1 | tail -1
  $py -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1 | tail -1
} 2>&1 | tee "$out/env.log"
timeout 300 $py -m pytest -q -p no:cacheprovider -o addopts="-ra" test/test_infer.py test/test_nets.py 2>&1 \
  | tee "$out/pytest.log" | tail -25
rc=$?
timeout 240 $py -m efs_ros.tools.bench_infer --repeats 3 2>&1 | tee "$out/bench_infer.log"
exit $rc
