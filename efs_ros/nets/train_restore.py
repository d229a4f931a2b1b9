"""Train EvRestoreNet on the classical pipeline's own output over the rig-family matrix.

    make train-restore                                 # python -m efs_ros.nets.train_restore
    python -m efs_ros.nets.train_restore --publish-run models/restore_run_depth --image-only
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

from efs_ros.core.metrics import textured_mask
from efs_ros.core.pipeline import PipelineConfig, run_pipeline_with_info
from efs_ros.core.restore import (
    FEATURE_CHANNELS,
    OUTPUT_CHANNELS,
    depth_confidence,
    restore_features,
    vergence_frame,
)
from efs_ros.nets.checkpoint import default_models_dir, load_training_checkpoint, save_training_checkpoint
from efs_ros.nets.data import default_cache_dir, filter_events, pipeline_response
from efs_ros.nets.models import EvRestoreNet, count_parameters
from efs_ros.nets.train import log_to_linear, refocus_loss
from efs_ros.sim.families import FAMILIES, draw

TRAIN_SEED_OFFSET = 5000
VAL_SEED_OFFSET = 7000
SAMPLE_VERSION = 2
"""2: with the relative vergence of the true depth and the truth's texture mask."""


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
    out_channels: int = OUTPUT_CHANNELS
    """3: image only; 4: image and relative vergence (depth); 5: and its expected error."""
    depth_weight: float = 0.1
    """Weight of the depth AbsRel term (textured pixels of the truth)."""
    psnr_weight: float = 0.0
    """Weight of the mean per-crop 10 log10(MSE) term: the bench's own measure, which an L1 loss
    neglects on nearly sharp scenes (a small absolute error there costs many dB)."""


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
    textured = textured_mask(truth)
    truth = np.repeat(truth[None], 3, axis=0) if truth.ndim == 2 else np.transpose(truth, (2, 0, 1))
    v_frame, v_span = vergence_frame(job.focus_t, job.focus_dpt)
    gt = job.ground_truth_depth
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_vergence = np.where(np.isfinite(gt) & (gt > 0), (1.0 / gt - v_frame) / v_span, np.nan)
    return {"features": feats.astype(np.float16), "truth": truth.astype(np.float16),
            "vergence_truth": rel_vergence.astype(np.float32), "textured": textured,
            "v_frame": v_frame, "v_span": v_span, "family": d.family, "params": json.dumps(d.params)}


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


@dataclass
class Sample:
    """One scene: [FEATURE_CHANNELS + 5, H, W] float16 planes (features, true RGB, true relative
    vergence (NaN: no depth), truth's texture mask) and the scene's vergence scale."""

    planes: np.ndarray
    v_frame: float
    v_span: float


TRUTH = slice(FEATURE_CHANNELS, FEATURE_CHANNELS + 3)
VERGENCE_TRUTH = FEATURE_CHANNELS + 3
TEXTURED = FEATURE_CHANNELS + 4


def load_samples(paths: list[Path]) -> list[Sample]:
    out = []
    for p in paths:
        with np.load(p) as z:
            planes = np.concatenate([z["features"], z["truth"], z["vergence_truth"][None].astype(np.float16),
                                     z["textured"][None].astype(np.float16)])
            out.append(Sample(planes, float(z["v_frame"]), float(z["v_span"])))
    return out


def batch_at(samples: list[Sample], cfg: RestoreTrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops with flips and transposes (every plane is per pixel, so all apply):
    [B, planes, S, S] and the [B, 2] vergence scales (v_frame, v_span)."""
    rng = np.random.default_rng([cfg.seed, step])
    crops, scales = [], []
    for _ in range(cfg.batch):
        sample = samples[int(rng.integers(len(samples)))]
        h, w = sample.planes.shape[1:]
        size = min(cfg.crop, h, w) // 4 * 4
        y0, x0 = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        c = sample.planes[:, y0:y0 + size, x0:x0 + size].astype(np.float32)
        if rng.random() < 0.5:
            c = c[:, :, ::-1]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        if rng.random() < 0.5:
            c = c.transpose(0, 2, 1)
        crops.append(np.ascontiguousarray(c))
        scales.append((sample.v_frame, sample.v_span))
    size = min(a.shape[1] for a in crops)
    crops = [a[:, :size, :size] for a in crops]
    return torch.from_numpy(np.stack(crops)), torch.tensor(scales, dtype=torch.float32)


def depth_rel_error(rel_pred: torch.Tensor, rel_true: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """|depth error| / true depth per pixel from relative vergences ([B, H, W]; scales [B, 2]).

    With v = 1 / depth, |1/v' - 1/v| / (1/v) = |v - v'| / v'; the predicted vergence is floored
    at 0.05 dpt (20 m), beyond which the error saturates at one (never rewards hiding at
    infinity)."""
    v_frame, v_span = scales[:, 0, None, None], scales[:, 1, None, None]
    v_pred = (v_frame + v_span * rel_pred).clamp(min=0.05)
    return ((rel_pred - rel_true).abs() * v_span / v_pred).clamp(max=1.0)


def restore_loss(pred: torch.Tensor, crop: torch.Tensor, scales: torch.Tensor, resp,
                 cfg: RestoreTrainConfig) -> torch.Tensor:
    truth = crop[:, TRUTH]
    loss = refocus_loss(pred[:, :3], truth, resp)
    if cfg.psnr_weight > 0:
        mse = ((log_to_linear(resp, pred[:, :3]) - truth) ** 2).mean(dim=(1, 2, 3))
        loss = loss + cfg.psnr_weight * (10.0 * torch.log10(mse + 1e-6)).mean()
    if pred.shape[1] >= 4 and cfg.depth_weight > 0:
        rel_true = crop[:, VERGENCE_TRUTH]
        judged = (crop[:, TEXTURED] > 0.5) & torch.isfinite(rel_true)
        err = depth_rel_error(pred[:, 3], torch.nan_to_num(rel_true), scales)
        n = judged.sum().clamp(min=1)
        loss = loss + cfg.depth_weight * (err * judged).sum() / n
        if pred.shape[1] == 5:
            # Laplace likelihood of the error the depth channel makes, its scale from channel 5;
            # the error is detached so that the confidence learns the depth, not the other way
            log_b = pred[:, 4].clamp(-7.0, 1.0)
            nll = err.detach() / torch.exp(log_b) + log_b
            loss = loss + 0.1 * cfg.depth_weight * (nll * judged).sum() / n
    return loss


def lr_at(cfg: RestoreTrainConfig, step: int) -> float:
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(step / cfg.steps, 1.0)))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def validate(model: EvRestoreNet, samples: list[Sample], resp) -> dict:
    """Full-image PSNR of the classical input and the restored output on the validation
    scenes; with a depth output, depth AbsRel over the truth's textured pixels of both (the
    classical depth where its confidence passes the pipeline's floor, at that coverage)."""
    model.eval()
    psnr_c, psnr_r, ar_c, cov_c, ar_r, ar_sure, cov_sure = [], [], [], [], [], [], []
    conf_min = PipelineConfig.confidence_min
    with torch.inference_mode():
        for sample in samples:
            p = sample.planes
            f = p[:FEATURE_CHANNELS].astype(np.float32)
            h, w = f.shape[1:]
            x = torch.from_numpy(np.pad(f, ((0, 0), (0, (-h) % 4), (0, (-w) % 4)), mode="edge"))[None]
            out = model(x)[0, :, :h, :w].numpy()
            truth = p[TRUTH].astype(np.float32)
            psnr_c.append(_psnr(np.clip(resp.inverse(f[3:6]), 0, 1), truth))
            psnr_r.append(_psnr(np.clip(resp.inverse(out[:3]), 0, 1), truth))
            if out.shape[0] >= 4:
                rel_true = p[VERGENCE_TRUTH].astype(np.float32)
                judged = (p[TEXTURED] > 0.5) & np.isfinite(rel_true)
                scales = torch.tensor([[sample.v_frame, sample.v_span]])
                true_t = torch.from_numpy(np.nan_to_num(rel_true))[None]
                err_r = depth_rel_error(torch.from_numpy(out[3])[None], true_t, scales)[0].numpy()
                err_c = depth_rel_error(torch.from_numpy(f[6])[None], true_t, scales)[0].numpy()
                confident = judged & (f[11] >= conf_min)
                ar_r.append(float(err_r[judged].mean()) if judged.any() else float("nan"))
                if out.shape[0] == 5:
                    sure = judged & (depth_confidence(out[4]) >= 0.5)
                    ar_sure.append(float(err_r[sure].mean()) if sure.any() else float("nan"))
                    cov_sure.append(float(sure.sum() / max(judged.sum(), 1)))
                ar_c.append(float(err_c[confident].mean()) if confident.any() else float("nan"))
                cov_c.append(float(confident.sum() / max(judged.sum(), 1)))
    model.train()
    gain = np.array(psnr_r) - np.array(psnr_c)
    out = {"classical_psnr": float(np.mean(psnr_c)), "restored_psnr": float(np.mean(psnr_r)),
           "gain_db": float(gain.mean()), "worst_gain_db": float(gain.min())}
    if ar_r:
        out.update(classical_abs_rel=float(np.nanmean(ar_c)), classical_coverage=float(np.mean(cov_c)),
                   restored_abs_rel=float(np.nanmean(ar_r)), worst_restored_abs_rel=float(np.nanmax(ar_r)))
    if ar_sure:
        out.update(confident_abs_rel=float(np.nanmean(ar_sure)), confident_coverage=float(np.mean(cov_sure)))
    return out


def init_from_checkpoint(model: EvRestoreNet, path: Path) -> list[str]:
    """Copy every tensor of another run's model that fits (the head's first channels when the
    new one has more); returns what could not be copied."""
    theirs = load_training_checkpoint(path)["model"]
    own = model.state_dict()
    skipped = []
    with torch.no_grad():
        for name, tensor in theirs.items():
            mine = own.get(name)
            if mine is None:
                skipped.append(name)
            elif mine.shape == tensor.shape:
                mine.copy_(tensor)
            elif mine.shape[1:] == tensor.shape[1:] and mine.shape[0] > tensor.shape[0]:
                mine[: tensor.shape[0]].copy_(tensor)
            else:
                skipped.append(name)
    return skipped


def train(cfg: RestoreTrainConfig, run_dir: Path, cache: Path, log=print,
          init_from: Path | None = None) -> EvRestoreNet:
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
    model = EvRestoreNet(base=cfg.base, in_channels=FEATURE_CHANNELS, out_channels=cfg.out_channels)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ckpt_path = run_dir / "checkpoint.pt"
    step = 0
    if ckpt_path.exists():
        state = load_training_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        log(f"resumed at step {step}")
        before = state.get("config", {})
        changed = {k: v for k, v in asdict(cfg).items() if before.get(k) != v}
        if changed:
            record({"event": "resume", "step": step, "changed": changed})
    else:
        skipped = init_from_checkpoint(model, init_from) if init_from is not None else None
        record({"event": "start", "config": asdict(cfg), "parameters": count_parameters(model),
                "init_from": str(init_from) if init_from else None, "init_skipped": skipped,
                "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                "torch": torch.__version__, "initial": validate(model, val_samples, resp)})
    t_run = time.perf_counter()
    running = []
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        crop, scales = batch_at(train_samples, cfg, step)
        loss = restore_loss(model(crop[:, :FEATURE_CHANNELS]), crop, scales, resp, cfg)
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


def image_only(model: EvRestoreNet) -> EvRestoreNet:
    """The same net without its depth channels: every layer, and the head's image rows (each
    output channel of the head is its own filter, so the image output is exactly the same)."""
    out = EvRestoreNet(base=model.config["base"], in_channels=model.in_channels,
                       log_center=model.log_center, out_channels=3)
    state = {k: (v[:3] if k.startswith("head.") else v) for k, v in model.state_dict().items()}
    out.load_state_dict(state)
    return out.eval()


def publish_run(run_dir: Path, models_dir: str | Path, image_only_net: bool = False) -> dict:
    """Publish a run's checkpoint as the shipped evrestorenet, with its run summary."""
    from efs_ros.nets.checkpoint import read_manifest, write_manifest
    from efs_ros.nets.export import publish

    state = load_training_checkpoint(run_dir / "checkpoint.pt")
    cfg = state["config"]
    model = EvRestoreNet(base=cfg["base"], in_channels=FEATURE_CHANNELS,
                         out_channels=cfg.get("out_channels", 3))
    model.load_state_dict(state["model"])
    model.eval()
    if image_only_net:
        model = image_only(model)
    publish({"evrestorenet": model}, models_dir)
    log = [json.loads(line) for line in (run_dir / "run_log.jsonl").read_text().splitlines()]
    last_val = next((e["val"] for e in reversed(log) if "val" in e), None)
    manifest = read_manifest(models_dir)
    manifest["models"]["evrestorenet"]["training"] = {
        "run": run_dir.name, "step": int(state["step"]), "config": cfg, "validation": last_val,
        "image_only": bool(image_only_net)}
    write_manifest(models_dir, manifest)
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--scenes", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate of the cosine schedule")
    ap.add_argument("--psnr-weight", type=float, default=None, help="weight of the per-crop PSNR term")
    ap.add_argument("--depth-weight", type=float, default=None, help="weight of the depth AbsRel term")
    ap.add_argument("--crop", type=int, default=None, help="crop size (px)")
    ap.add_argument("--batch", type=int, default=None, help="crops per step")
    ap.add_argument("--run-dir", default=None, help="checkpoint + run log (default models/restore_run)")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", default=None, help="publish the trained net to this models folder")
    ap.add_argument("--publish", action="store_true", help="publish to the shipped models folder")
    ap.add_argument("--quick", action="store_true", help="tiny run for tests")
    ap.add_argument("--publish-run", default=None,
                    help="publish this run directory's checkpoint (no training) to --out or the "
                    "shipped models")
    ap.add_argument("--image-only", action="store_true", help="with --publish-run: drop the depth channels")
    ap.add_argument("--prepare-only", action="store_true", help="simulate the scenes, do not train")
    ap.add_argument("--init-from", default=None,
                    help="start a new run from another run's checkpoint (layers that fit; a new "
                    "depth channel of the head starts at zero)")
    args = ap.parse_args(argv)
    cfg = RestoreTrainConfig()
    if args.quick:
        cfg = replace(cfg, scenes=2, val_scenes=1, steps=4, batch=2, crop=32, checkpoint_every=2,
                      validate_every=4, base=4)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.scenes is not None:
        cfg = replace(cfg, scenes=args.scenes)
    given = {"lr": args.lr, "psnr_weight": args.psnr_weight, "depth_weight": args.depth_weight,
             "crop": args.crop, "batch": args.batch}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    run_dir = Path(args.run_dir) if args.run_dir else default_models_dir() / "restore_run"
    cache = Path(args.cache) if args.cache else default_cache_dir()
    if args.publish_run:
        target = args.out or str(default_models_dir())
        publish_run(Path(args.publish_run), target, args.image_only)
        print(f"published {args.publish_run} to {target}")
        return 0
    if args.prepare_only:
        ensure_samples(cache, "train", cfg.scenes, TRAIN_SEED_OFFSET)
        ensure_samples(cache, "val", cfg.val_scenes, VAL_SEED_OFFSET)
        return 0
    model = train(cfg, run_dir, cache, init_from=Path(args.init_from) if args.init_from else None)
    out = args.out or (str(default_models_dir()) if args.publish else None)
    if out:
        from efs_ros.nets.export import publish

        publish({"evrestorenet": model.eval()}, out)
        print(f"published evrestorenet to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
