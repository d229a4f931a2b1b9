"""Inference backends, safe model loading, ONNX parity and the TensorRT engine cache."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from efs_ros.infer import BackendUnavailableError, InferenceBackend, load_backend
from efs_ros.infer.base import crop_to, pad_to_multiple
from efs_ros.infer.engine_cache import EngineCache, cache_key
from efs_ros.infer.onnx_backend import OnnxRuntimeBackend
from efs_ros.infer.tensorrt_backend import unavailable_reason
from efs_ros.infer.torch_backend import TorchBackend
from efs_ros.nets.checkpoint import (
    ModelLoadError,
    default_models_dir,
    load_model,
    onnx_bytes,
    read_manifest,
    save_state_dict,
    sha256_file,
    write_manifest,
)
from efs_ros.nets.export import ONNX_TOLERANCE, example_inputs, max_abs_difference, publish
from efs_ros.nets.models import EvMergeNet, EvRefocusNet, EvRestoreNet

TRT_REASON = unavailable_reason()


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core machine a two-thread pool stalls under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_nets(seed: int = 0):
    """Nets with every weight perturbed, so outputs depend on all layers (the refocus head
    starts at zero, which would hide a broken decoder)."""
    torch.manual_seed(seed)
    nets = {"evrefocusnet": EvRefocusNet(), "evmergenet": EvMergeNet(), "evrestorenet": EvRestoreNet()}
    with torch.no_grad():
        for net in nets.values():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return nets


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    publish(_random_nets(), d, info={"note": "random test weights"})
    return d


@pytest.fixture()
def models_copy(models_dir, tmp_path):
    d = tmp_path / "models"
    shutil.copytree(models_dir, d)
    return d


def _inputs(h, w, c=3, n=5, seed=0):
    rng = np.random.default_rng(seed)
    lf = np.log(rng.uniform(0.0, 1.0, (c, h, w)) + 0.02).astype(np.float32)
    bins = rng.integers(-1, 2, (64, h, w)).astype(np.float32)
    stack = rng.uniform(0, 1, (n, c, h, w)).astype(np.float32)
    ev = rng.integers(-3, 4, (n, h, w)).astype(np.float32)
    return lf, bins, stack, ev


# --- safe loading -------------------------------------------------------------------------------

def test_published_models_round_trip_bit_exactly(models_dir):
    nets = _random_nets()
    for name, ref in nets.items():
        loaded = load_model(name, models_dir)
        for k, v in ref.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    manifest = read_manifest(models_dir)
    for entry in manifest["models"].values():
        assert entry["sha256"] == sha256_file(models_dir / entry["weights"])
        assert entry["onnx_sha256"] == sha256_file(models_dir / entry["onnx"])


def test_tampered_weights_raise_model_load_error(models_copy):
    path = models_copy / "evrefocusnet.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256 mismatch for evrefocusnet.safetensors"):
        load_model("evrefocusnet", models_copy)
    load_model("evmergenet", models_copy)  # the other net is untouched and still loads


def test_tampered_onnx_is_refused_before_parsing(models_copy):
    path = models_copy / "evmergenet.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match="sha256 mismatch for evmergenet.onnx"):
        OnnxRuntimeBackend(models_copy, provider="cpu")


def test_wrong_shapes_raise_model_load_error_naming_the_tensor(models_copy):
    wrong = EvRefocusNet(base=8)
    manifest = read_manifest(models_copy)
    entry = manifest["models"]["evrefocusnet"]
    entry["sha256"] = save_state_dict(wrong, models_copy / entry["weights"])  # checksum fits
    write_manifest(models_copy, manifest)
    with pytest.raises(ModelLoadError, match=r"does not fit EvRefocusNet: wrong shapes: img_enc"):
        load_model("evrefocusnet", models_copy)


def test_missing_checksum_and_missing_file_are_refused(models_copy):
    manifest = read_manifest(models_copy)
    del manifest["models"]["evmergenet"]["sha256"]
    write_manifest(models_copy, manifest)
    with pytest.raises(ModelLoadError, match="no sha256 recorded"):
        load_model("evmergenet", models_copy)
    (models_copy / "evrefocusnet.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model file missing"):
        load_model("evrefocusnet", models_copy)
    with pytest.raises(ModelLoadError, match="no model manifest"):
        load_model("evrefocusnet", models_copy / "nowhere")


def test_pickled_code_is_never_executed(models_copy, tmp_path):
    """A .pt whose pickle would run code is rejected by weights_only loading."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pt = models_copy / "evil.pt"
    torch.save({"x": Evil()}, pt)
    manifest = read_manifest(models_copy)
    manifest["models"]["evrefocusnet"].update(weights="evil.pt", sha256=sha256_file(pt))
    write_manifest(models_copy, manifest)
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        load_model("evrefocusnet", models_copy)
    assert not marker.exists()


# --- ONNX parity --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["evrefocusnet", "evmergenet", "evrestorenet"])
def test_onnx_runtime_matches_torch_at_two_sizes(models_dir, name):
    model = load_model(name, models_dir)
    data, _ = onnx_bytes(name, models_dir)
    diff = max_abs_difference(model, data, sizes=((36, 52), (68, 100)))
    assert diff < ONNX_TOLERANCE[name]
    # the outputs are not trivially equal to an input (a broken graph could pass a loose check)
    args = example_inputs(model, 36, 52)
    with torch.no_grad():
        out = model(*args)
    assert out.shape[-2:] == (36, 52)
    assert float(out.std()) > 1e-3


# --- backends -----------------------------------------------------------------------------------

def test_padding_round_trip():
    x = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    padded, hw = pad_to_multiple(x, 4)
    assert padded.shape == (2, 8, 8) and hw == (5, 7)
    np.testing.assert_array_equal(crop_to(padded, hw), x)
    np.testing.assert_array_equal(padded[:, 7, :7], x[:, 4, :])  # edge replication


@pytest.mark.parametrize("hw", [(30, 45), (48, 64)])
def test_torch_and_onnxruntime_backends_agree(models_dir, hw):
    lf, bins, stack, ev = _inputs(*hw)
    tb = TorchBackend(models_dir, device="cpu")
    ob = OnnxRuntimeBackend(models_dir, provider="cpu")
    rt, ro = tb.refocus(lf, bins), ob.refocus(lf, bins)
    assert rt.shape == lf.shape and rt.dtype == np.float32
    np.testing.assert_allclose(ro, rt, atol=ONNX_TOLERANCE["evrefocusnet"])
    wt, wo = tb.merge_weights(stack, ev), ob.merge_weights(stack, ev)
    assert wt.shape == ev.shape
    np.testing.assert_allclose(wo, wt, atol=ONNX_TOLERANCE["evmergenet"])
    np.testing.assert_allclose(wt.sum(axis=0), 1.0, atol=1e-5)
    fused = tb.merge(stack, ev)
    np.testing.assert_allclose(fused, np.einsum("nchw,nhw->chw", stack, wt), atol=1e-5)
    features = _restore_features(*hw)
    st, so = tb.restore(features), ob.restore(features)
    assert st.shape == (3, *hw) and tb.has_restore and ob.has_restore
    np.testing.assert_allclose(so, st, atol=ONNX_TOLERANCE["evrestorenet"])
    assert float(np.abs(st - features[3:6]).max()) > 1e-3  # the perturbed net does correct


def _restore_features(h, w, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.uniform(-1, 1, (EvRestoreNet().in_channels, h, w)).astype(np.float32)
    features[:6] = np.log(rng.uniform(0.02, 1.0, (6, h, w)) * 255.0)
    return features


def test_backends_without_the_restore_net_say_so(models_copy):
    manifest = read_manifest(models_copy)
    del manifest["models"]["evrestorenet"]
    write_manifest(models_copy, manifest)
    for backend in (TorchBackend(models_copy, device="cpu"), OnnxRuntimeBackend(models_copy, provider="cpu")):
        assert not backend.has_restore
        with pytest.raises(BackendUnavailableError, match="no restoration net"):
            backend.restore(_restore_features(8, 8))


def test_backend_handles_mono_batches_and_rejects_bad_shapes(models_dir):
    tb = TorchBackend(models_dir, device="cpu")
    lf, bins, stack, ev = _inputs(20, 24)
    mono = lf[:1]
    out = tb.refocus(mono, bins)
    assert out.shape == (1, 20, 24)
    # grey RGB in, mean of the channels out: exactly what mono means
    grey = tb.refocus(np.repeat(mono, 3, axis=0), bins)
    np.testing.assert_allclose(out[0], grey.mean(axis=0), atol=1e-5)
    batch = tb.refocus(np.stack([lf, lf]), np.stack([bins, -bins]))
    np.testing.assert_allclose(batch[0], tb.refocus(lf, bins), atol=1e-5)
    assert not np.allclose(batch[0], batch[1])
    assert tb.merge_weights(stack[:, :1], ev).shape == ev.shape
    with pytest.raises(ValueError, match="event_bins shape"):
        tb.refocus(lf, bins[:32])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        tb.refocus(np.zeros((2, 20, 24), np.float32), bins)
    with pytest.raises(ValueError, match="does not fit stack"):
        tb.merge_weights(stack, ev[:2])


def test_load_backend_auto_picks_an_available_backend_and_logs_it(models_dir, caplog):
    with caplog.at_level(logging.INFO, logger="efs_ros.infer"):
        backend = load_backend("auto", models_dir)
    assert isinstance(backend, InferenceBackend)
    assert backend.name in caplog.text
    if TRT_REASON is not None:
        assert "tensorrt" in caplog.text  # listed among the skipped, with its reason
        assert not backend.name.startswith("tensorrt")
    with pytest.raises(ValueError, match="unknown inference backend"):
        load_backend("tflite", models_dir)
    with caplog.at_level(logging.INFO, logger="efs_ros.infer"):
        measured = load_backend("auto", models_dir, measure=True)
    assert "measured" in caplog.text and measured.name in caplog.text


def test_backends_warn_when_the_pipeline_response_is_not_the_trained_one(models_copy, caplog):
    from efs_ros.nets.data import pipeline_response, response_spec

    manifest = read_manifest(models_copy)
    manifest["info"]["response"] = response_spec(pipeline_response())
    write_manifest(models_copy, manifest)
    assert TorchBackend(models_copy, device="cpu").response_warning is None
    manifest["info"]["response"] = {"type": "LogResponse", "eps": 0.5}
    write_manifest(models_copy, manifest)
    with caplog.at_level(logging.WARNING, logger="efs_ros.infer"):
        ob = OnnxRuntimeBackend(models_copy, provider="cpu")
    assert "retrain" in ob.response_warning and "LogResponse" in caplog.text


def test_bad_model_files_are_not_skipped_by_auto(models_copy):
    """Damaged files raise from the first backend auto opens (ONNX Runtime reads .onnx, PyTorch
    .safetensors; torch-cuda comes first on a GPU machine) instead of falling through to the
    next backend, which would read the same files."""
    for name in ("evmergenet.onnx", "evmergenet.safetensors"):
        (models_copy / name).write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        load_backend("auto", models_copy)


# --- engine cache (no TensorRT needed: build and load are callables) ----------------------------

class _FakeRuntime:
    def __init__(self):
        self.builds = 0

    def build(self, payload=b"engine-v1"):
        def _b():
            self.builds += 1
            return payload
        return _b

    @staticmethod
    def load(data):
        return None if data.startswith(b"bad") else ("engine", data)


def test_engine_cache_builds_once_then_hits(tmp_path):
    cache, rt = EngineCache(tmp_path), _FakeRuntime()
    fields = {"onnx_sha256": "a" * 64, "tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    obj, out = cache.get_or_build("evrefocusnet", fields, rt.build(), rt.load)
    assert out.built and rt.builds == 1 and obj == ("engine", b"engine-v1")
    obj, out = cache.get_or_build("evrefocusnet", fields, rt.build(), rt.load)
    assert not out.built and out.reason == "cache hit" and rt.builds == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("field,value", [("tensorrt", "10.4.0"), ("gpu", "H100"),
                                         ("compute_capability", "9.0"), ("onnx_sha256", "b" * 64)])
def test_engine_cache_rebuilds_when_a_key_field_changes(tmp_path, field, value):
    cache, rt = EngineCache(tmp_path), _FakeRuntime()
    fields = {"onnx_sha256": "a" * 64, "tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    cache.get_or_build("m", fields, rt.build(), rt.load)
    changed = {**fields, field: value}
    assert cache_key(changed) != cache_key(fields)
    _, out = cache.get_or_build("m", changed, rt.build(), rt.load)
    assert out.built and rt.builds == 2 and out.reason == "no cached engine"


def test_engine_cache_rebuilds_corrupt_or_unloadable_engines(tmp_path):
    cache, rt = EngineCache(tmp_path), _FakeRuntime()
    fields = {"onnx_sha256": "a" * 64}
    _, out = cache.get_or_build("m", fields, rt.build(), rt.load)
    out.path.write_bytes(b"engine-v1-truncated")
    _, out = cache.get_or_build("m", fields, rt.build(), rt.load)
    assert out.built and "sha256" in out.reason
    # bytes that pass the checksum but that the runtime rejects (e.g. another TensorRT build)
    cache.store("m", fields, b"bad engine")
    obj, out = cache.get_or_build("m", fields, rt.build(), rt.load)
    assert out.built and "failed to load" in out.reason and obj == ("engine", b"engine-v1")
    with pytest.raises(RuntimeError, match="does not load"):
        cache.get_or_build("n", fields, rt.build(b"bad too"), rt.load)


# --- TensorRT (GPU machines only) ---------------------------------------------------------------

@pytest.mark.skipif(TRT_REASON is not None, reason=f"TensorRT backend unavailable: {TRT_REASON}")
def test_tensorrt_matches_torch_and_reuses_its_engine(models_dir, tmp_path):
    from efs_ros.infer.tensorrt_backend import TensorRTBackend

    lf, bins, stack, ev = _inputs(60, 84)
    tb = TorchBackend(models_dir, device="cpu")
    trt = TensorRTBackend(models_dir, cache_dir=tmp_path, max_hw=(128, 128), max_slices=8)
    assert all(o.built for o in trt.outcomes.values())
    tol = 0.05 if trt.fp16 else 1e-3
    np.testing.assert_allclose(trt.refocus(lf, bins), tb.refocus(lf, bins), atol=tol)
    np.testing.assert_allclose(trt.merge_weights(stack, ev), tb.merge_weights(stack, ev), atol=tol)
    features = _restore_features(60, 84)
    np.testing.assert_allclose(trt.restore(features), tb.restore(features), atol=tol)
    trt.close()
    again = TensorRTBackend(models_dir, cache_dir=tmp_path, max_hw=(128, 128), max_slices=8)
    assert not any(o.built for o in again.outcomes.values())
    with pytest.raises(ValueError, match="outside the engine profile"):
        again.refocus(*_inputs(132, 64)[:2])


@pytest.mark.skipif(TRT_REASON is None, reason="TensorRT is available here; the unavailable path is not")
def test_tensorrt_reports_why_it_is_unavailable(models_dir):
    from efs_ros.infer.tensorrt_backend import TensorRTBackend

    with pytest.raises(BackendUnavailableError, match="tensorrt: "):
        TensorRTBackend(models_dir)


# --- PyTorch on CUDA (GPU machines only) ----------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to PyTorch")
def test_torch_cuda_matches_cpu_and_auto_prefers_a_gpu_backend(models_dir):
    lf, bins, stack, ev = _inputs(60, 84)
    cpu = TorchBackend(models_dir, device="cpu")
    gpu = TorchBackend(models_dir, device="cuda")
    assert gpu.name == "torch-cuda"
    # TF32 convolutions on Ampere+ differ from fp32 in the 3rd-4th digit
    np.testing.assert_allclose(gpu.refocus(lf, bins), cpu.refocus(lf, bins), atol=2e-2)
    np.testing.assert_allclose(gpu.merge_weights(stack, ev), cpu.merge_weights(stack, ev), atol=2e-2)
    assert load_backend("auto", models_dir).name in ("tensorrt", "onnxruntime-cuda", "torch-cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to PyTorch")
def test_shipped_nets_on_cuda_give_the_cpu_image():
    from efs_ros.core.metrics import psnr
    from efs_ros.core.pipeline import PipelineConfig, run_pipeline
    from efs_ros.sim.rig import RigConfig, simulate_sweep
    from efs_ros.sim.sensor import SensorConfig

    job = simulate_sweep(RigConfig(height=96, width=128, steps=80), SensorConfig.clean(),
                         np.random.default_rng(3)).to_job(0)
    images = {}
    for device in ("cpu", "cuda"):
        backend = TorchBackend(device=device)
        config = PipelineConfig(dense_times=8, refocus_net=backend.refocus,
                                merge_net=backend.merge_weights)
        images[device] = run_pipeline(job, config).all_in_focus
    truth = job.ground_truth_aif
    assert abs(psnr(images["cuda"], truth) - psnr(images["cpu"], truth)) < 0.05
    assert psnr(images["cuda"], images["cpu"]) > 45.0


# --- the shipped models -------------------------------------------------------------------------

def test_shipped_models_load_verify_and_run():
    """The shipped files are the ones the manifest names (sha256), and what the manifest claims
    of them that a test can afford is recomputed here, not read back: ONNX Runtime gives the
    PyTorch outputs within tolerance (the stored onnx_max_abs_diff is not trusted). The stored
    evaluation is a benchmark claim: `make bench-quality` and the model card, not a test."""
    d = default_models_dir()
    manifest = read_manifest(d)
    assert set(manifest["models"]) == {"evrefocusnet", "evmergenet", "evrestorenet"}
    total = 0
    for entry in manifest["models"].values():
        assert sha256_file(d / entry["weights"]) == entry["sha256"]
        assert sha256_file(d / entry["onnx"]) == entry["onnx_sha256"]
        total += (d / entry["weights"]).stat().st_size + (d / entry["onnx"]).stat().st_size
    assert total < 8 * 2**20
    cards = {name: (d / ("EVRESTORENET.md" if name == "evrestorenet" else "MODEL_CARD.md")).read_text()
             for name in manifest["models"]}
    for name, entry in manifest["models"].items():
        assert entry["sha256"] in cards[name] and entry["onnx_sha256"] in cards[name]
    # max |ORT - torch|, recomputed: the export's own random inputs at two sizes, and inputs
    # laid out as the pipeline gives them (log frame + event bins, stack + event stacks)
    for name in manifest["models"]:
        data, _ = onnx_bytes(name, d)
        diff = max_abs_difference(load_model(name, d), data, sizes=((28, 36), (36, 52)))
        assert diff < ONNX_TOLERANCE[name], (name, diff)
    lf, bins, stack, ev = _inputs(28, 36)
    ob = OnnxRuntimeBackend(d, provider="cpu")
    tb = TorchBackend(d, device="cpu")
    refocused = tb.refocus(lf, bins)
    weights = tb.merge_weights(stack, ev)
    assert float(np.abs(ob.refocus(lf, bins) - refocused).max()) < ONNX_TOLERANCE["evrefocusnet"]
    assert float(np.abs(ob.merge_weights(stack, ev) - weights).max()) < \
        ONNX_TOLERANCE["evmergenet"]
    features = _restore_features(28, 36)
    assert float(np.abs(ob.restore(features) - tb.restore(features)).max()) < ONNX_TOLERANCE["evrestorenet"]
    # and the outputs are not trivially constant (a broken graph could pass a loose check)
    assert float(refocused.std()) > 1e-3 and float(weights.std()) > 1e-3
    json.dumps(manifest["info"])  # the manifest info stays plain JSON


def test_shipped_restore_net_beats_the_classical_path_on_a_noisy_rig():
    """An unseen noisy rig (v2e noisy preset, frame read and shot noise, validation textures, a
    seed no training scene used): one pass of the shipped EvRestoreNet over the classical image
    is closer to the truth than the classical image, by a clear margin."""
    from efs_ros.core.metrics import psnr
    from efs_ros.core.pipeline import PipelineConfig, run_pipeline_with_info
    from efs_ros.sim.rig import RigConfig, simulate_sweep
    from efs_ros.sim.sensor import SensorConfig

    backend = OnnxRuntimeBackend(provider="cpu")
    rig = RigConfig(height=96, width=128, textures="val", steps=100, read_noise=0.015, full_well=2000.0)
    gains = []
    for seed in (31, 32):
        job = simulate_sweep(rig, SensorConfig.noisy(), np.random.default_rng([8_000, seed])).to_job(0)
        classical, _ = run_pipeline_with_info(job)
        restored, _ = run_pipeline_with_info(job, PipelineConfig(restore_net=backend.restore))
        gains.append(psnr(restored.all_in_focus, job.ground_truth_aif) -
                     psnr(classical.all_in_focus, job.ground_truth_aif))
    assert min(gains) > 0.5 and np.mean(gains) > 0.8, gains  # measured 1.16 and 0.66 dB
