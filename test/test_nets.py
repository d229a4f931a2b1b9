"""EvRefocusNet / EvMergeNet: shapes and sizes, training data, the training loop, shipped weights."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from efs_ros.nets.checkpoint import default_models_dir
from efs_ros.nets.data import (
    RecordSpec,
    crop_events,
    filter_events,
    load_records,
    pipeline_response,
    refocus_batch,
    refocus_inputs,
)
from efs_ros.nets.models import EvMergeNet, EvRefocusNet, count_parameters, flops_per_megapixel
from efs_ros.nets.train import (
    TrainConfig,
    Trainer,
    refocus_loss,
    response_forward,
    response_inverse,
    ssim_torch,
)


def test_default_nets_are_small_and_keep_the_shapes():
    ref, mer = EvRefocusNet(), EvMergeNet()
    assert 100_000 < count_parameters(ref) < 500_000
    assert 100_000 < count_parameters(mer) < 500_000
    # A 1280x720 pass must stay within an embedded GPU's budget: < 150 GFLOPs per megapixel.
    assert 10e9 < flops_per_megapixel(ref, size=(64, 64)) < 150e9
    assert 10e9 < flops_per_megapixel(mer, n_slices=3, size=(64, 64)) < 150e9
    with torch.no_grad():
        for h, w in ((32, 48), (52, 40)):
            out = ref(torch.rand(2, 3, h, w), torch.zeros(2, 64, h, w))
            assert out.shape == (2, 3, h, w)
            for n in (2, 5):
                wts = mer(torch.rand(1, n, 3, h, w), torch.zeros(1, n, h, w))
                assert wts.shape == (1, n, h, w)
                torch.testing.assert_close(wts.sum(dim=1), torch.ones(1, h, w))


def test_untrained_refocus_net_is_plain_integration():
    """The residual head starts at zero: output = log frame + threshold x event sum."""
    torch.manual_seed(0)
    net = EvRefocusNet()
    lf = torch.rand(1, 3, 16, 20) * 5
    bins = torch.randint(-2, 3, (1, 64, 16, 20)).float()
    with torch.no_grad():
        out = net(lf, bins)
    torch.testing.assert_close(out, lf + 0.2 * bins.sum(dim=1, keepdim=True))


def test_merge_net_is_equivariant_to_slice_order():
    torch.manual_seed(1)
    net = EvMergeNet()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        stack, ev = torch.rand(1, 4, 3, 24, 24), torch.randn(1, 4, 24, 24)
        perm = torch.tensor([2, 0, 3, 1])
        w = net(stack, ev)
        wp = net(stack[:, perm], ev[:, perm])
    torch.testing.assert_close(wp, w[:, perm], atol=1e-6, rtol=1e-5)
    assert float(w.std()) > 1e-3  # not uniform weights


def test_response_torch_matches_the_pipeline_response():
    resp = pipeline_response()
    lum = np.linspace(0, 1, 101, dtype=np.float32)
    y = resp.forward(lum)
    np.testing.assert_allclose(response_forward(resp, torch.from_numpy(lum)).numpy(), y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(response_inverse(resp, torch.from_numpy(y)).numpy(), lum, atol=1e-5)


def test_ssim_torch_behaves():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 32, 32, generator=g)
    assert float(ssim_torch(a, a)) == pytest.approx(1.0, abs=1e-5)
    noisy = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    noisier = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert float(ssim_torch(a, noisier)) < float(ssim_torch(a, noisy)) < 0.99


# --- data ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("nets_cache")


@pytest.fixture(scope="module")
def tiny_records(tiny_cache):
    spec = RecordSpec(split="train", n=4, size=64, targets=3, lens_width=(96, 96))
    return spec, load_records(spec, tiny_cache)


def test_records_are_seeded_cached_and_regenerated_when_damaged(tiny_cache, tiny_records):
    spec, rec = tiny_records
    assert len(rec) == 4 and rec.targets.shape == (4, 3, 64, 64, 3)
    assert len(rec.events) > 0 and rec.ev_offsets[-1] == len(rec.events)
    files = list(tiny_cache.rglob("*.npz"))
    assert len(files) == 1
    again = load_records(spec, tiny_cache)  # from the cache
    np.testing.assert_array_equal(again.frames, rec.frames)
    files[0].write_bytes(b"garbage")
    regen = load_records(spec, tiny_cache)  # damaged file: simulated again, identical
    np.testing.assert_array_equal(regen.frames, rec.frames)
    np.testing.assert_array_equal(regen.events, rec.events)
    other = load_records(RecordSpec(split="val", n=1, size=64, targets=3, lens_width=(96, 96)), tiny_cache)
    assert not np.array_equal(other.frames[0], rec.frames[0])


def test_event_crop_keeps_exactly_the_window():
    ev = np.zeros(4, dtype=[("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "i1")])
    ev["x"], ev["y"], ev["p"] = [1, 5, 9, 5], [2, 6, 6, 1], [1, -1, 1, 1]
    out = crop_events(ev, 2, 4, 6, 4)  # rows 2..7, cols 4..7
    assert out[["x", "y"]].tolist() == [(1, 4)]
    flipped = crop_events(ev, 2, 4, 6, 4, flip_x=True, flip_y=True)
    assert flipped[["x", "y"]].tolist() == [(2, 1)]


def test_training_inputs_are_what_the_pipeline_feeds_the_net(tiny_records):
    """Spy on the pipeline's refocus hook and rebuild its inputs with the training code."""
    from efs_ros.core.pipeline import PipelineConfig, run_pipeline_with_info
    from efs_ros.sim.rig import RigConfig, simulate_sweep
    from efs_ros.sim.sensor import SensorConfig

    sweep = simulate_sweep(RigConfig(height=32, width=40, steps=60), SensorConfig.noisy(),
                           np.random.default_rng(5))
    job = sweep.to_job(0)
    seen = []

    def spy(log_frame, bins):
        seen.append((log_frame, bins))
        return log_frame

    _, info = run_pipeline_with_info(job, PipelineConfig(dense_times=3, refocus_net=spy))
    assert len(seen) == len(info["times_s"]) >= 2
    events = filter_events(job.events, job.height, job.width)
    assert 0 < len(events) < len(job.events)  # the noisy sensor's isolated events are dropped
    for (lf, bins), t in zip(seen, info["times_s"], strict=True):
        lf2, bins2 = refocus_inputs(job.frame, events, float(t))
        np.testing.assert_array_equal(lf, lf2)
        np.testing.assert_array_equal(bins, bins2)


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions on a shared 2-core machine: with other processes busy, torch's
    two-thread pool stalls (measured 75 s vs 3 s for the training test); one thread is steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quick_training_reduces_the_loss_and_resumes_exactly(tiny_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("EFS_NETS_CACHE", str(tiny_cache))
    cfg = TrainConfig.quick()
    cfg.refocus_steps, cfg.val_every, cfg.ckpt_every, cfg.lr = 40, 1000, 20, 3e-3
    rng = np.random.default_rng(11)
    trainer = Trainer(cfg, tmp_path / "a", progress=False)
    train = trainer.records("train")
    fixed = [tuple(map(torch.from_numpy, refocus_batch(train, rng, 4, 40, trainer.resp))) for _ in range(3)]

    def loss_on(net):
        with torch.no_grad():
            return float(np.mean([float(refocus_loss(net(a, b), c, trainer.resp)) for a, b, c in fixed]))

    before = loss_on(trainer.refocus)
    trainer.train_refocus(train, train)
    after = loss_on(trainer.refocus)
    # The untrained net is already plain integration, a strong start: 40 steps gain ~2 %.
    assert after < 0.99 * before
    assert float(trainer.refocus.head.weight.detach().abs().max()) > 0  # the decoder was trained
    assert [s for s, _ in trainer.history["refocus"]] == list(range(40))

    # Stopped after the checkpoint at step 20, resumed: the same weights as the straight run.
    part = Trainer(cfg, tmp_path / "b", progress=False)
    part.train_refocus(train, train, until=20)
    resumed = Trainer(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.step["refocus"] == 20
    resumed.train_refocus(train, train)
    for k, v in trainer.refocus.state_dict().items():
        torch.testing.assert_close(resumed.refocus.state_dict()[k], v, msg=k)


# --- the shipped weights ------------------------------------------------------------------------

def test_shipped_refocus_net_beats_plain_integration_on_a_noisy_sensor():
    """A held-out noisy sweep (validation textures, unseen seed): the learned refocus is closer
    to the true defocused images than plain integration with the pipeline's threshold."""
    from efs_ros.core.pipeline import PipelineConfig, run_pipeline_with_info
    from efs_ros.infer.torch_backend import TorchBackend
    from efs_ros.nets.train import refocus_metrics
    from efs_ros.sim.optics import ThinLens
    from efs_ros.sim.rig import RigConfig, simulate_sweep
    from efs_ros.sim.sensor import SensorConfig

    backend = TorchBackend(device="cpu")
    rng = np.random.default_rng([4_000, 1])
    # Lens geometry of a 256 px image (the evaluation's blur, up to ~10 px radius) on a small frame.
    rig = RigConfig(height=96, width=128, textures="val", steps=120, lens=ThinLens.default(256))
    sweep = simulate_sweep(rig, SensorConfig.noisy(), rng)
    job = sweep.to_job(0)
    _, info = run_pipeline_with_info(job, PipelineConfig(dense_times=8))
    m = refocus_metrics(backend, sweep, job, info["threshold"], n_times=3)
    assert m["net"] > m["integration"] + 1.0, m


# --- EvRestoreNet -------------------------------------------------------------------------------

def test_untrained_restore_net_returns_the_classical_image_and_depth():
    from efs_ros.core.restore import FEATURE_CHANNELS
    from efs_ros.nets.models import EvRestoreNet

    torch.manual_seed(0)
    features = torch.rand(2, FEATURE_CHANNELS, 20, 24) * 4
    with torch.no_grad():
        torch.testing.assert_close(EvRestoreNet(out_channels=3)(features), features[:, 3:6])
        torch.testing.assert_close(EvRestoreNet(out_channels=4)(features), features[:, 3:7])
    with pytest.raises(ValueError, match="out_channels"):
        EvRestoreNet(out_channels=2)


def test_restore_depth_error_is_abs_rel_of_the_depths():
    from efs_ros.nets.train_restore import depth_rel_error

    scales = torch.tensor([[2.0, 4.0]])  # frame at 2 dpt, 4 dpt of sweep
    rel_true, rel_pred = torch.tensor([[[0.25]]]), torch.tensor([[[0.5]]])  # 3 dpt vs 4 dpt
    expected = abs(1 / 4 - 1 / 3) / (1 / 3)
    assert float(depth_rel_error(rel_pred, rel_true, scales)) == pytest.approx(expected)


def test_quick_restore_training_publishes_a_net_the_pipeline_runs_and_resumes(tmp_path):
    """Two simulated scenes, four steps: the run leaves a checkpoint and a run log, a second
    call with more steps continues from the checkpoint, and the published net plugs into the
    pipeline through a backend (image and depth from it)."""
    import json

    from efs_ros.core.pipeline import PipelineConfig, run_pipeline_with_info
    from efs_ros.infer.onnx_backend import OnnxRuntimeBackend
    from efs_ros.nets.train_restore import main, scene_draw
    from efs_ros.tools.bench_quality import simulate

    run, cache, out = tmp_path / "run", tmp_path / "cache", tmp_path / "models"
    shutil.copytree(default_models_dir(), out, ignore=shutil.ignore_patterns("restore_run*"))
    assert main(["--quick", "--run-dir", str(run), "--cache", str(cache)]) == 0
    log = [json.loads(line) for line in (run / "run_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[-1]["step"] == 4
    again = ["--quick", "--steps", "6", "--run-dir", str(run), "--cache", str(cache), "--out", str(out)]
    assert main(again) == 0
    log = [json.loads(line) for line in (run / "run_log.jsonl").read_text().splitlines()]
    assert log[-2]["event"] == "resume" and log[-2]["step"] == 4 and log[-1]["step"] == 6
    assert "restored_abs_rel" in log[-1]["val"]

    backend = OnnxRuntimeBackend(out, provider="cpu")
    assert backend.has_restore
    job = simulate(scene_draw(0, 5000), use_cache=False)
    result, _ = run_pipeline_with_info(job, PipelineConfig(restore_net=backend.restore))
    assert result.all_in_focus.shape == job.frame.shape and np.isfinite(result.all_in_focus).all()
    assert "restore" in result.timings_ms
    judged = np.isfinite(result.depth)
    assert judged.mean() > 0.3 and np.all(result.depth[judged] > 0)
