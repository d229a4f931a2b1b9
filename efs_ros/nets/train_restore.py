"""Train EvRestoreNet on the classical pipeline's own output over the rig-family matrix.

    make train-restore                                 # python -m efs_ros.nets.train_restore
    python -m efs_ros.nets.train_restore --steps 6000  # continue a run to more steps
    python -m efs_ros.nets.train_restore --quick --run-dir /tmp/r --out /tmp/m   # smoke run

Every training scene is a draw of one of bench-quality's families (sim/families.py) with the
family's seed moved by TRAIN_SEED_OFFSET, validation scenes by VAL_SEED_OFFSET: the same
ranges, never the scenes the bench scores, and never the held-out family. Each scene is
simulated, run through the default classical pipeline, and stored as the net's input planes
(core.restore.restore_features) with its truth, so the net learns to correct exactly what the
pipeline gives it.

Resumable: the run directory holds the checkpoint (model, optimiser, step) and a JSON-lines run
log; batches come from generators seeded by (seed, step), so a resumed run sees the batches an
uninterrupted one would. Training uses one thread (the other core stays free).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from efs_ros.core.pipeline import PipelineConfig, run_pipeline_with_info
from efs_ros.core.restore import FEATURE_CHANNELS, restore_features
from efs_ros.nets.checkpoint import default_models_dir, load_training_checkpoint, save_training_checkpoint
from efs_ros.nets.data import default_cache_dir, filter_events, pipeline_response
from efs_ros.nets.models import EvRestoreNet, count_parameters
from efs_ros.nets.train import refocus_loss
from efs_ros.sim.families import FAMILIES, draw

TRAIN_SEED_OFFSET = 5000
VAL_SEED_OFFSET = 7000
SAMPLE_VERSION = 1


@dataclass
class RestoreTrainConfig:
    scenes: int = 240
    val_scenes: int = 12
    steps: int = 4000
    batch: int = 8
    crop: int = 96
    lr: float = 1e-3
    lr_min: float = 5e-5
    base: int = 16
    seed: int = 0
    checkpoint_every: int = 200
    validate_every: int = 500
    threads: int = 1


def training_families():
    return [f for f in FAMILIES if not f.held_out]


def scene_draw(index: int, offset: int):
    """Scene `index` of the training (or validation) set: families in turn, moved seeds."""
    fams = training_families()
    fam = fams[index % len(fams)]
    return draw(replace(fam, seed=fam.seed + offset), index // len(fams))


def sample_path(cache: Path, split: str, index: int) -> Path:
    return cache / f"restore-v{SAMPLE_VERSION}" / f"{split}-{index:05d}.npz"


def make_sample(index: int, offset: int) -> dict:
    """Net input planes, classical image and truth of one simulated scene."""
    from efs_ros.tools.bench_quality import simulate

    d = scene_draw(index, offset)
    job = simulate(d, use_cache=False)
    config = PipelineConfig()
    result, _ = run_pipeline_with_info(job, config)
    h, w = job.height, job.width
    events = filter_events(job.events, h, w, window_us=_filter_window_us(config, job))
    feats = restore_features(job.frame, result.all_in_focus, result.refocus_map, result.confidence, events,
                             job.focus_t, job.focus_dpt, config.response)
    truth = job.ground_truth_aif
    truth = np.repeat(truth[None], 3, axis=0) if truth.ndim == 2 else np.transpose(truth, (2, 0, 1))
    return {"features": feats.astype(np.float16), "truth": truth.astype(np.float16),
            "family": d.family, "params": json.dumps(d.params)}


def _filter_window_us(config: PipelineConfig, job) -> float:
    from efs_ros.core.pipeline import event_filter_window_us

    return event_filter_window_us(config, job)


def ensure_samples(cache: Path, split: str, n: int, offset: int, log=print) -> list[Path]:
    paths = []
    for i in range(n):
        path = sample_path(cache, split, i)
        if not path.exists():
            t0 = time.perf_counter()
            sample = make_sample(i, offset)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **sample)
            tmp.replace(path)
            log(f"{split} scene {i + 1}/{n} ({sample['family']}, "
                f"{sample['features'].shape[2]}x{sample['features'].shape[1]}) "
                f"{time.perf_counter() - t0:.1f} s")
        paths.append(path)
    return paths


def load_samples(paths: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for p in paths:
        with np.load(p) as z:
            out.append((z["features"], z["truth"]))
    return out


def batch_at(samples, cfg: RestoreTrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops with flips and transposes (every input plane is per pixel, so all apply)."""
    rng = np.random.default_rng([cfg.seed, step])
    feats, truths = [], []
    for _ in range(cfg.batch):
        f, t = samples[int(rng.integers(len(samples)))]
        h, w = f.shape[1:]
        size = min(cfg.crop, h, w) // 4 * 4
        y0, x0 = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        fc = f[:, y0:y0 + size, x0:x0 + size].astype(np.float32)
        tc = t[:, y0:y0 + size, x0:x0 + size].astype(np.float32)
        if rng.random() < 0.5:
            fc, tc = fc[:, :, ::-1], tc[:, :, ::-1]
        if rng.random() < 0.5:
            fc, tc = fc[:, ::-1], tc[:, ::-1]
        if rng.random() < 0.5:
            fc, tc = fc.transpose(0, 2, 1), tc.transpose(0, 2, 1)
        feats.append(np.ascontiguousarray(fc))
        truths.append(np.ascontiguousarray(tc))
    size = min(a.shape[1] for a in feats)
    feats = [a[:, :size, :size] for a in feats]
    truths = [a[:, :size, :size] for a in truths]
    return torch.from_numpy(np.stack(feats)), torch.from_numpy(np.stack(truths))


def lr_at(cfg: RestoreTrainConfig, step: int) -> float:
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(step / cfg.steps, 1.0)))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def validate(model: EvRestoreNet, samples, resp) -> dict:
    """Full-image PSNR of the classical input and the restored output on the validation scenes."""
    model.eval()
    classical, restored = [], []
    with torch.inference_mode():
        for f, t in samples:
            h, w = f.shape[1:]
            ph, pw = (-h) % 4, (-w) % 4
            x = torch.from_numpy(np.pad(f.astype(np.float32), ((0, 0), (0, ph), (0, pw)), mode="edge"))[None]
            out = model(x)[0, :, :h, :w].numpy()
            truth = t.astype(np.float32)
            classical.append(_psnr(np.clip(resp.inverse(f[3:6].astype(np.float32)), 0, 1), truth))
            restored.append(_psnr(np.clip(resp.inverse(out), 0, 1), truth))
    model.train()
    gain = np.array(restored) - np.array(classical)
    return {"classical_psnr": float(np.mean(classical)), "restored_psnr": float(np.mean(restored)),
            "gain_db": float(gain.mean()), "worst_gain_db": float(gain.min())}


def train(cfg: RestoreTrainConfig, run_dir: Path, cache: Path, log=print) -> EvRestoreNet:
    torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "run_log.jsonl"

    def record(entry: dict) -> None:
        with open(log_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    train_samples = load_samples(ensure_samples(cache, "train", cfg.scenes, TRAIN_SEED_OFFSET, log))
    val_samples = load_samples(ensure_samples(cache, "val", cfg.val_scenes, VAL_SEED_OFFSET, log))
    resp = pipeline_response()
    torch.manual_seed(cfg.seed)
    model = EvRestoreNet(base=cfg.base, in_channels=FEATURE_CHANNELS)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ckpt_path = run_dir / "checkpoint.pt"
    step = 0
    if ckpt_path.exists():
        state = load_training_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        log(f"resumed at step {step}")
    else:
        record({"event": "start", "config": asdict(cfg), "parameters": count_parameters(model),
                "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                "torch": torch.__version__, "initial": validate(model, val_samples, resp)})
    t_run = time.perf_counter()
    running = []
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        feats, truth = batch_at(train_samples, cfg, step)
        loss = refocus_loss(model(feats), truth, resp)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(loss.item())
        step += 1
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            entry = {"step": step, "loss": float(np.mean(running)), "lr": lr_at(cfg, step),
                     "seconds": time.perf_counter() - t_run}
            running = []
            if step % cfg.validate_every == 0 or step == cfg.steps:
                entry["val"] = validate(model, val_samples, resp)
            save_training_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                 "step": step, "config": asdict(cfg)})
            record(entry)
            log(json.dumps(entry))
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--scenes", type=int, default=None)
    ap.add_argument("--run-dir", default=None, help="checkpoint + run log (default models/restore_run)")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", default=None, help="publish the trained net to this models folder")
    ap.add_argument("--publish", action="store_true", help="publish to the shipped models folder")
    ap.add_argument("--quick", action="store_true", help="tiny run for tests")
    args = ap.parse_args(argv)
    cfg = RestoreTrainConfig()
    if args.quick:
        cfg = replace(cfg, scenes=2, val_scenes=1, steps=4, batch=2, crop=32, checkpoint_every=2,
                      validate_every=4, base=4)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.scenes is not None:
        cfg = replace(cfg, scenes=args.scenes)
    run_dir = Path(args.run_dir) if args.run_dir else default_models_dir() / "restore_run"
    cache = Path(args.cache) if args.cache else default_cache_dir()
    model = train(cfg, run_dir, cache)
    out = args.out or (str(default_models_dir()) if args.publish else None)
    if out:
        from efs_ros.nets.export import publish

        publish({"evrestorenet": model.eval()}, out)
        print(f"published evrestorenet to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
