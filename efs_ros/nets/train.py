"""Train EvRefocusNet then EvMergeNet from the simulator, publish them to models/, evaluate.

    make train                                   # python -m efs_ros.nets.train
    python -m efs_ros.nets.train --resume        # continue from .cache/efs_nets/run/checkpoint.pt
    python -m efs_ros.nets.train --quick --out /tmp/m   # tiny smoke run (tests)
    python -m efs_ros.nets.train --eval-only     # re-evaluate the published models, rewrite the card

Losses need no pretrained network (nothing can be downloaded here, so the paper's VGG
perceptual term is out): L1 + 0.2 (1 - SSIM) + 0.5 L1 of image gradients, on linear intensity,
plus 0.1 L1 on log intensity for the refocus net (keeps dark regions from being ignored).
Every batch is drawn from a generator seeded by (seed, phase, step), so a resumed run sees
exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from efs_ros.nets.checkpoint import (
    default_models_dir,
    load_model,
    load_training_checkpoint,
    read_manifest,
    save_training_checkpoint,
    write_manifest,
)
from efs_ros.nets.data import (
    Records,
    RecordSpec,
    crop_arrays,
    filter_events,
    load_records,
    merge_inputs,
    merge_times,
    pipeline_event_filter_us,
    pipeline_response,
    random_crop,
    refocus_batch,
    refocus_inputs,
    response_spec,
    to_chw,
)
from efs_ros.nets.export import ONNX_TOLERANCE, publish
from efs_ros.nets.models import EvMergeNet, EvRefocusNet, count_parameters, flops_per_megapixel

log = logging.getLogger("efs_ros.nets.train")

PHASES = ("refocus", "merge")


# ------------------------------------------------------------------------------------------------
# Losses (no pretrained backbone)

def _gauss_window(channels: int, size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of [B,C,H,W] images in [0, 1] (Gaussian 7x7 window, valid region)."""
    c = a.shape[1]
    win = _gauss_window(c).to(a)
    mu_a = F.conv2d(a, win, groups=c)
    mu_b = F.conv2d(b, win, groups=c)
    saa = F.conv2d(a * a, win, groups=c) - mu_a**2
    sbb = F.conv2d(b * b, win, groups=c) - mu_b**2
    sab = F.conv2d(a * b, win, groups=c) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.mean()


def gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def image_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + 0.2 (1 - SSIM) + 0.5 gradient L1 on linear images."""
    l1 = (pred - target).abs().mean()
    return l1 + 0.2 * (1 - ssim_torch(pred, target)) + 0.5 * gradient_l1(pred, target)


def response_inverse(resp, y: torch.Tensor) -> torch.Tensor:
    """Torch version of the pipeline response's inverse (lin-log or log(L + eps)), unclamped."""
    if hasattr(resp, "linear_below_dn"):
        j = float(resp.linear_below_dn)
        joint = math.log(j)
        dn = torch.where(y < joint, y * (j / joint), torch.exp(torch.clamp(y, min=joint)))
        return dn / float(resp.dn_scale)
    return torch.exp(y) - float(resp.eps)


def response_forward(resp, lum: torch.Tensor) -> torch.Tensor:
    lum = lum.clamp(min=0.0)
    if hasattr(resp, "linear_below_dn"):
        j = float(resp.linear_below_dn)
        dn = lum * float(resp.dn_scale)
        return torch.where(dn < j, dn * (math.log(j) / j), torch.log(torch.clamp(dn, min=j)))
    return torch.log(lum + float(resp.eps))


def log_to_linear(resp, log_img: torch.Tensor) -> torch.Tensor:
    """Net output to linear intensity, clamped the way the pipeline clamps refocused images."""
    return response_inverse(resp, log_img).clamp(0.0, 1.0)


def refocus_loss(pred_log: torch.Tensor, target_lin: torch.Tensor, resp) -> torch.Tensor:
    pred_lin = response_inverse(resp, pred_log)  # unclamped: keeps gradients outside [0, 1]
    target_log = response_forward(resp, target_lin)
    return image_loss(pred_lin, target_lin) + 0.1 * (pred_log - target_log).abs().mean()


def merge_loss(stack: torch.Tensor, weights: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return image_loss(EvMergeNet.fuse(stack, weights), target)


# ------------------------------------------------------------------------------------------------
# Configuration

@dataclass
class TrainConfig:
    seed: int = 0
    n_train: int = 480
    n_val: int = 32
    record_size: int = 128
    targets: int = 12
    crop: tuple[int, int] = (64, 96)
    refocus_steps: int = 3600
    refocus_batch: int = 8
    merge_steps: int = 800
    merge_batch: int = 4
    merge_samples: int = 256
    merge_slices: tuple[int, int] = (8, 16)
    lr: float = 1e-3
    lr_final: float = 5e-5
    base: int = 16
    val_every: int = 200
    ckpt_every: int = 100
    threads: int = 2
    eval_jobs: int = 8
    eval_size: int = 256
    eval_slices: int = 16
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> TrainConfig:
        return cls(n_train=6, n_val=2, record_size=64, targets=4, crop=(32, 48), refocus_steps=30,
                   refocus_batch=4, merge_steps=20, merge_batch=2, merge_samples=6, merge_slices=(3, 5),
                   val_every=10, ckpt_every=10, eval_jobs=0, base=8)


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Cosine decay from lr to lr_final, after a short warm-up."""
    warm = max(1, total // 50)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    f = (step - warm) / max(1, total - warm)
    return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * min(f, 1.0)))


def _crop_size(cfg: TrainConfig, rng: np.random.Generator) -> int:
    lo, hi = cfg.crop
    return int(rng.integers(lo // 4, hi // 4 + 1)) * 4


def _step_rng(cfg: TrainConfig, phase: str, step: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, PHASES.index(phase), step])


# ------------------------------------------------------------------------------------------------
# Merge data: stacks produced by the (trained) refocus net

@dataclass
class MergeSet:
    stacks: np.ndarray  # [M, N, 3, S, S] float16 linear, refocused by the net
    events: np.ndarray  # [M, N, S, S] float16 merge event stacks
    targets: np.ndarray  # [M, 3, S, S] float16 all-in-focus

    def __len__(self) -> int:
        return int(self.stacks.shape[0])


def refocus_stack(model: EvRefocusNet, frame: np.ndarray, events: np.ndarray, times_s: np.ndarray,
                  resp) -> np.ndarray:
    """[N,3,H,W] linear images at times_s from the net, as the pipeline's learned path makes them."""
    lf, bins = zip(*(refocus_inputs(frame, events, t, resp) for t in times_s), strict=True)
    with torch.no_grad():
        out = model(torch.from_numpy(np.stack(lf)), torch.from_numpy(np.stack(bins)))
    return log_to_linear(resp, out).numpy()


def build_merge_set(model: EvRefocusNet, rec: Records, cfg: TrainConfig, n: int, seed_offset: int = 0,
                    progress: bool = False) -> MergeSet:
    model.eval()
    resp = pipeline_response()
    size = min(cfg.crop[1], rec.frames.shape[1])
    k = cfg.merge_slices[1]
    stacks = np.zeros((n, k, 3, size, size), np.float16)
    events = np.zeros((n, k, size, size), np.float16)
    targets = np.zeros((n, 3, size, size), np.float16)
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="merge stacks", unit="sample", leave=False)
    for j in it:
        rng = np.random.default_rng([cfg.seed, 7, seed_offset, j])
        c = random_crop(rec, rng, size, index=j % len(rec))
        frame, ev, aif, _ = crop_arrays(rec, c)
        span = tuple(rec.span_s[c.index])
        times = merge_times(span, k, rng)
        stacks[j] = refocus_stack(model, np.ascontiguousarray(frame), ev, times, resp)
        events[j] = merge_inputs(ev, times, size, size, span)
        targets[j] = to_chw(aif)
    return MergeSet(stacks, events, targets)


def merge_batch(ms: MergeSet, rng: np.random.Generator, batch: int, size: int, n_range: tuple[int, int]):
    n_full, s_full = ms.stacks.shape[1], ms.stacks.shape[-1]
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    st, ev, tg = [], [], []
    for _ in range(batch):
        i = int(rng.integers(len(ms)))
        sl = np.sort(rng.choice(n_full, size=n, replace=False))
        y0, x0 = (int(v) for v in rng.integers(0, s_full - size + 1, 2))
        win = (slice(y0, y0 + size), slice(x0, x0 + size))
        st.append(ms.stacks[i][sl][..., win[0], win[1]])
        ev.append(ms.events[i][sl][..., win[0], win[1]])
        tg.append(ms.targets[i][..., win[0], win[1]])
    f32 = lambda x: torch.from_numpy(np.stack(x).astype(np.float32))  # noqa: E731
    return f32(st), f32(ev), f32(tg)


# ------------------------------------------------------------------------------------------------
# Training loop

class Trainer:
    def __init__(self, cfg: TrainConfig, work: Path, resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.work / "checkpoint.pt"
        self.progress = progress
        torch.manual_seed(cfg.seed)
        self.resp = pipeline_response()
        self.event_filter_us = pipeline_event_filter_us()
        self.refocus = EvRefocusNet(base=cfg.base, log_center=float(self.resp.forward(np.float32(0.25))))
        self.merge = EvMergeNet(base=cfg.base)
        self.opt = {"refocus": torch.optim.Adam(self.refocus.parameters(), lr=cfg.lr),
                    "merge": torch.optim.Adam(self.merge.parameters(), lr=cfg.lr)}
        self.step = {"refocus": 0, "merge": 0}
        self.history: dict[str, list] = {"refocus": [], "merge": [], "refocus_val": [], "merge_val": []}
        self.seconds = {"refocus": 0.0, "merge": 0.0, "data": 0.0}
        if resume and self.ckpt_path.exists():
            self._load()

    def _state(self) -> dict:
        return {"refocus": self.refocus.state_dict(), "merge": self.merge.state_dict(),
                "opt_refocus": self.opt["refocus"].state_dict(), "opt_merge": self.opt["merge"].state_dict(),
                "step": dict(self.step), "history": self.history, "seconds": self.seconds,
                "config": json.dumps(asdict(self.cfg))}

    def _save(self) -> None:
        save_training_checkpoint(self.ckpt_path, self._state())

    def _load(self) -> None:
        st = load_training_checkpoint(self.ckpt_path)
        saved = json.loads(st["config"])
        if saved.get("base") != self.cfg.base:
            raise SystemExit(f"checkpoint {self.ckpt_path} has base {saved.get('base')}, "
                             f"config {self.cfg.base}")
        self.refocus.load_state_dict(st["refocus"])
        self.merge.load_state_dict(st["merge"])
        self.opt["refocus"].load_state_dict(st["opt_refocus"])
        self.opt["merge"].load_state_dict(st["opt_merge"])
        self.step = dict(st["step"])
        self.history = {k: [tuple(x) for x in v] for k, v in st["history"].items()}
        self.seconds = dict(st["seconds"])
        log.info("resumed from %s at steps %s", self.ckpt_path, self.step)

    # --- data
    def records(self, split: str) -> Records:
        c = self.cfg
        spec = RecordSpec(split=split, n=c.n_train if split == "train" else c.n_val, size=c.record_size,
                          targets=c.targets, seed=c.seed,
                          lens_width=(160, 320) if c.record_size >= 96 else (c.record_size, c.record_size))
        t0 = time.perf_counter()
        rec = load_records(spec, progress=self.progress).with_pipeline_filter(self.event_filter_us)
        self.seconds["data"] += time.perf_counter() - t0
        return rec

    def _bar(self, phase: str, total: int):
        from tqdm import tqdm

        return tqdm(total=total, initial=self.step[phase], desc=f"train {phase}", unit="step",
                    disable=not self.progress, dynamic_ncols=True, file=sys.stderr,
                    mininterval=0.5 if sys.stderr.isatty() else 30.0)

    # --- refocus
    def _refocus_val(self, val_batches) -> float:
        self.refocus.eval()
        with torch.no_grad():
            losses = [float(refocus_loss(self.refocus(lf, ev), tg, self.resp)) for lf, ev, tg in val_batches]
        self.refocus.train()
        return float(np.mean(losses))

    def train_refocus(self, train: Records, val: Records, until: int | None = None) -> None:
        """Train to cfg.refocus_steps (or stop early at step `until`, as an interruption would)."""
        c = self.cfg
        total = c.refocus_steps
        rng_v = np.random.default_rng([c.seed, 99])
        val_batches = [tuple(map(torch.from_numpy, refocus_batch(val, rng_v, c.refocus_batch, c.crop[1],
                                                                 self.resp))) for _ in range(4)]
        self.refocus.train()
        opt = self.opt["refocus"]
        bar = self._bar("refocus", total)
        t_last = time.perf_counter()
        while self.step["refocus"] < min(total, until or total):
            s = self.step["refocus"]
            rng = _step_rng(c, "refocus", s)
            lf, ev, tg = map(torch.from_numpy, refocus_batch(train, rng, c.refocus_batch, _crop_size(c, rng),
                                                             self.resp))
            for g in opt.param_groups:
                g["lr"] = _lr_at(c, s, total)
            loss = refocus_loss(self.refocus(lf, ev), tg, self.resp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.refocus.parameters(), 1.0)
            opt.step()
            self.step["refocus"] = s + 1
            self.history["refocus"].append((s, loss.item()))
            now = time.perf_counter()
            self.seconds["refocus"] += now - t_last
            t_last = now
            if (s + 1) % c.val_every == 0 or s + 1 == total:
                self.history["refocus_val"].append((s + 1, self._refocus_val(val_batches)))
                t_last = time.perf_counter()
            if (s + 1) % c.ckpt_every == 0 or s + 1 == total:
                self._save()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{_lr_at(c, s, total):.1e}")
        bar.close()

    # --- merge
    def _merge_val(self, val_batches) -> float:
        self.merge.eval()
        with torch.no_grad():
            losses = [float(merge_loss(st, self.merge(st, ev), tg)) for st, ev, tg in val_batches]
        self.merge.train()
        return float(np.mean(losses))

    def train_merge(self, train: Records, val: Records) -> None:
        c = self.cfg
        total = c.merge_steps
        if self.step["merge"] >= total:
            return
        t0 = time.perf_counter()
        ms = build_merge_set(self.refocus, train, c, c.merge_samples, progress=self.progress)
        ms_val = build_merge_set(self.refocus, val, c, max(4, len(val)), seed_offset=1)
        self.seconds["data"] += time.perf_counter() - t0
        rng_v = np.random.default_rng([c.seed, 98])
        size = ms.stacks.shape[-1]
        val_batches = [merge_batch(ms_val, rng_v, c.merge_batch, size, (c.merge_slices[1],) * 2)
                       for _ in range(3)]
        self.merge.train()
        opt = self.opt["merge"]
        bar = self._bar("merge", total)
        t_last = time.perf_counter()
        while self.step["merge"] < total:
            s = self.step["merge"]
            rng = _step_rng(c, "merge", s)
            st, ev, tg = merge_batch(ms, rng, c.merge_batch, min(_crop_size(c, rng), size), c.merge_slices)
            for g in opt.param_groups:
                g["lr"] = _lr_at(c, s, total)
            loss = merge_loss(st, self.merge(st, ev), tg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.merge.parameters(), 1.0)
            opt.step()
            self.step["merge"] = s + 1
            self.history["merge"].append((s, loss.item()))
            now = time.perf_counter()
            self.seconds["merge"] += now - t_last
            t_last = now
            if (s + 1) % c.val_every == 0 or s + 1 == total:
                self.history["merge_val"].append((s + 1, self._merge_val(val_batches)))
                t_last = time.perf_counter()
            if (s + 1) % c.ckpt_every == 0 or s + 1 == total:
                self._save()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()

    def run(self) -> None:
        train = self.records("train")
        val = self.records("val")
        self.train_refocus(train, val)
        self.train_merge(train, val)
        self._save()


# ------------------------------------------------------------------------------------------------
# Outputs: loss curve, evaluation, model card

def plot_losses(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, phase in zip(axes, PHASES, strict=True):
        tr = np.array(history.get(phase) or [(0, np.nan)], dtype=np.float64)
        k = max(1, len(tr) // 60)
        smooth = np.convolve(tr[:, 1], np.ones(k) / k, mode="valid")
        ax.plot(tr[:, 0], tr[:, 1], color="0.8", lw=0.6, label="train (per step)")
        ax.plot(tr[k - 1:, 0], smooth, color="C0", label=f"train (mean of {k})")
        va = np.array(history.get(f"{phase}_val") or [(0, np.nan)], dtype=np.float64)
        ax.plot(va[:, 0], va[:, 1], "o-", color="C3", ms=3, label="validation")
        ax.set_title({"refocus": "EvRefocusNet", "merge": "EvMergeNet"}[phase])
        ax.set_xlabel("step")
        ax.set_ylabel("loss (L1 + SSIM + gradient)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def eval_jobs(cfg: TrainConfig, sensor: str, n: int):
    """Held-out validation jobs: validation textures, seeds of the test split, full-size frames."""
    from efs_ros.nets.data import sensor_for
    from efs_ros.sim.rig import RigConfig, simulate_sweep

    jobs = []
    for i in range(n):
        rng = np.random.default_rng([3_000, cfg.seed, i])
        rig = RigConfig(height=cfg.eval_size, width=cfg.eval_size, textures="val",
                        scene_kind=("layers", "slanted", "mixed")[i % 3])
        sweep = simulate_sweep(rig, sensor_for(sensor, rng), rng, direction=(1, -1)[i % 2])
        jobs.append((sweep, sweep.to_job(stamp_ns=i)))
    return jobs


def classical_refocuser(job, threshold: float):
    """The pipeline's plain-integration refocuser for a job (its default response and bins)."""
    from efs_ros.core.pipeline import PipelineConfig
    from efs_ros.core.refocus import EventStack, Refocuser

    pc = PipelineConfig()
    events = filter_events(job.events, job.height, job.width)
    stack = EventStack(events, job.height, job.width, job.sweep_span_s, pc.n_bins)
    return Refocuser(np.asarray(job.frame, np.float32), stack, threshold, pc.response,
                     getattr(pc, "colour", "gain"))


def refocus_metrics(backend, sweep, job, threshold: float, n_times: int = 6) -> dict:
    """PSNR of refocused images vs the true defocused image: plain integration (with the
    pipeline's estimated threshold) vs the net, at n_times times spread over the sweep."""
    from efs_ros.core.metrics import psnr
    from efs_ros.sim.optics import FocalRenderer

    resp = pipeline_response()
    classic = classical_refocuser(job, threshold)
    renderer = FocalRenderer(sweep.scene, sweep.lens,
                             (float(job.focus_dpt.min()), float(job.focus_dpt.max())))
    t0, t1 = job.sweep_span_s
    out = {"integration": [], "net": []}
    events = filter_events(job.events, job.height, job.width)  # what the pipeline gives the net
    for t in np.linspace(t0, t1, n_times + 2)[1:-1]:
        truth = renderer.render(float(job.focus_at(t)))
        out["integration"].append(psnr(classic.image(float(t)), truth))
        lf, bins = refocus_inputs(job.frame, events, float(t), resp)
        lin = np.clip(resp.inverse(backend.refocus(lf, bins)), 0, 1)
        out["net"].append(psnr(np.transpose(lin, (1, 2, 0)), truth))
    return {k: float(np.mean(v)) for k, v in out.items()}


def evaluate(backend, cfg: TrainConfig, n_jobs: int | None = None, progress: bool = True) -> dict:
    """Classical vs learned refocus vs learned refocus + merge, PSNR / SSIM / MS-SSIM, per sensor."""
    from efs_ros.core.metrics import ms_ssim, psnr, ssim
    from efs_ros.core.pipeline import PipelineConfig, run_pipeline_with_info

    n_jobs = cfg.eval_jobs if n_jobs is None else n_jobs
    methods = {
        "input frame": None,
        "classical (dense, focus merge)": PipelineConfig(),
        "classical (dense, refocus-map merge)": PipelineConfig(merge="refocus_map"),
        "learned refocus + focus merge": PipelineConfig(dense_times=cfg.eval_slices,
                                                        refocus_net=backend.refocus),
        "learned refocus + learned merge": PipelineConfig(dense_times=cfg.eval_slices,
                                                          refocus_net=backend.refocus,
                                                          merge_net=backend.merge_weights),
    }
    table: dict = {}
    for sensor in ("clean", "noisy"):
        jobs = eval_jobs(cfg, sensor, n_jobs)
        per = {m: {"psnr": [], "ssim": [], "ms_ssim": [], "ms": []} for m in methods}
        refo = {"integration": [], "net": []}
        for sweep, job in jobs:
            gt = job.ground_truth_aif
            threshold = None
            for name, pc in methods.items():
                t0 = time.perf_counter()
                if pc is None:
                    img = job.frame
                else:
                    res, info = run_pipeline_with_info(job, pc)
                    img = res.all_in_focus
                    threshold = info["threshold"] if threshold is None else threshold
                per[name]["ms"].append(1e3 * (time.perf_counter() - t0))
                per[name]["psnr"].append(psnr(img, gt))
                per[name]["ssim"].append(ssim(img, gt))
                per[name]["ms_ssim"].append(ms_ssim(img, gt))
            for k, v in refocus_metrics(backend, sweep, job, threshold).items():
                refo[k].append(v)
            if progress:
                print(f"  eval {sensor} job {job.stamp_ns}: " + ", ".join(
                    f"{m.split(' ')[0]} {per[m]['psnr'][-1]:.2f}" for m in methods)
                    + f"; refocus integ {refo['integration'][-1]:.2f} net {refo['net'][-1]:.2f}",
                    file=sys.stderr)
        table[sensor] = {m: {k: float(np.mean(v)) for k, v in d.items()} for m, d in per.items()}
        table[sensor]["_refocus_psnr"] = {k: float(np.mean(v)) for k, v in refo.items()}
    table["_jobs"] = {"n_per_sensor": n_jobs, "size": cfg.eval_size, "textures": "val",
                      "seeds": "test split (3000, seed, i)", "learned_slices": cfg.eval_slices}
    return table


def _table_md(ev: dict) -> str:
    lines = ["| sensor | method | PSNR dB | SSIM | MS-SSIM | CPU ms/job |", "|---|---|---|---|---|---|"]
    for sensor in ("clean", "noisy"):
        for m, r in ev[sensor].items():
            if m.startswith("_"):
                continue
            lines.append(f"| {sensor} | {m} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['ms_ssim']:.4f} "
                         f"| {r['ms']:.0f} |")
    lines += ["", "Refocused slices (6 times per job) vs the true defocused image, PSNR dB:", "",
              "| sensor | plain integration (estimated threshold) | EvRefocusNet |", "|---|---|---|"]
    for sensor in ("clean", "noisy"):
        r = ev[sensor]["_refocus_psnr"]
        lines.append(f"| {sensor} | {r['integration']:.2f} | {r['net']:.2f} |")
    return "\n".join(lines)


def write_model_card(models_dir: Path, cfg: TrainConfig, info: dict, ev: dict | None) -> None:
    """MODEL_CARD.md: architecture, sizes, data, training, held-out metrics, checksums."""
    m = read_manifest(models_dir)["models"]
    ref, mer = EvRefocusNet(**m["evrefocusnet"]["config"]), EvMergeNet(**m["evmergenet"]["config"])
    gf_r, gf_m = flops_per_megapixel(ref) / 1e9, flops_per_megapixel(mer) / 1e9
    steps, secs, val = info["steps"], info["seconds"], info.get("final_val", {})
    nan = float("nan")
    resp = info.get("response", {})
    resp_txt = ", ".join(f"{k} {v}" for k, v in resp.items() if k != "type")
    b = cfg.base
    out = [
        "# EvRefocusNet and EvMergeNet (efs_ros)",
        "",
        'Small re-designs of the two networks of "All-in-focus Imaging from Event Focal Stack" (Lou',
        "et al., CVPR 2023), trained from scratch on this project's simulator on a 2-core CPU. Code:",
        "`efs_ros/nets/models.py`; training: `make train` (`efs_ros/nets/train.py`); serving:",
        "`efs_ros.infer.load_backend()` (TensorRT, ONNX Runtime or PyTorch).",
        "",
        "The default learned path is now the single-pass EvRestoreNet (`EVRESTORENET.md`); these",
        "two are the per-slice path (`learned: slices`).",
        "",
        "## Architecture",
        "",
        "| net | parameters | GFLOPs per megapixel | inputs -> output |",
        "|---|---|---|---|",
        f"| EvRefocusNet | {count_parameters(ref):,} | {gf_r:.1f} | response(frame) [3,H,W], 64 "
        "equal-count event bins [64,H,W] -> response(image at t) [3,H,W] |",
        f"| EvMergeNet | {count_parameters(mer):,} | {gf_m:.1f} per slice | N refocused images "
        "[N,3,H,W] (linear), N event stacks [N,H,W] -> softmax weights [N,H,W] |",
        "",
        "FLOPs counted with `torch.utils.flop_counter` (multiply-add = 2) at 256 x 256; one 1280 x 720",
        f"refocus pass is {gf_r * 0.9216:.0f} GFLOPs, a 16-slice merge {gf_m * 0.9216 * 16:.0f} GFLOPs. "
        "H and W must be multiples",
        "of 4; the backends pad (edge replication) and crop. Mono frames run as grey RGB.",
        f"The frame is mapped through the pipeline's sensor response ({resp.get('type', '?')}: {resp_txt}),",
        "and the net's output goes back through its inverse; a backend warns if the pipeline's",
        "response differs from the one the nets were trained with.",
        "",
        f"- EvRefocusNet: two encoders (image, events) at full, 1/2 and 1/4 resolution ({b}/{2 * b}/{4 * b}",
        "  channels), fused by 1x1 convolutions at every scale, decoder with skip concatenation.",
        "  Output = response(frame) + a x (sum of the bins) + residual: `a` is a learned global",
        "  threshold (plain integration, Equation 5) and the residual head starts at zero, so the",
        "  untrained net equals plain integration and training learns the corrections: per-pixel",
        "  threshold mismatch, leak and shot noise, photoreceptor lag, colour.",
        "- EvMergeNet: one shared per-slice U-Net (any N, independent of slice order); at 1/2 and 1/4",
        "  resolution each slice's features are joined with the mean and max over all slices.",
        "  Per-pixel softmax over the slices; the fused image is the weighted sum, the same weights",
        "  for R, G and B.",
        "",
        "## Training data",
        "",
        f"Simulated sweeps (`efs_ros.sim`): {cfg.n_train} training sweeps of {cfg.record_size} x "
        f"{cfg.record_size} px (training textures, seed {cfg.seed},",
        "scene kinds layers / slanted / mixed, lens geometry of 160..320 px wide images so blur radii",
        f"reach ~10-13 px), {cfg.targets} true defocused target images per sweep (rendered at the lens",
        f"vergence of stratified times), random {cfg.crop[0]}..{cfg.crop[1]} px crops with flips. "
        "Event sensors: 50 % `SensorConfig.randomized`",
        "(v2e with thresholds 0.15-0.35, mismatch 0-0.06, cutoff 30-1000 Hz, leak 0.005-0.5 Hz, shot",
        "noise 0.001-5 Hz, refractory 0-1 ms; or DVS-Voltmeter with all six k randomised), 20 % the v2e",
        "noisy preset, 15 % clean, 15 % DVS346 / DVS240 Voltmeter presets. Net inputs are built with",
        "the pipeline's own `log_frame_chw`, `event_bins_between` and `merge_event_stacks`.",
        f"EvMergeNet trains on stacks refocused by the trained EvRefocusNet ({cfg.merge_samples} crops of "
        f"{cfg.crop[1]} px,",
        f"{cfg.merge_slices[0]}..{cfg.merge_slices[1]} slices at evenly spread, jittered times) against "
        "the all-in-focus truth.",
        f"Validation: {cfg.n_val} sweeps with the validation textures (disjoint sources) and other seeds.",
        "",
        "## Training",
        "",
        f"Adam, lr {cfg.lr:g} cosine-decayed to {cfg.lr_final:g}, gradient clipping 1.0, batch "
        f"{cfg.refocus_batch} (refocus) and {cfg.merge_batch} (merge);",
        f"{steps['refocus']} + {steps['merge']} steps, {secs['refocus'] / 60:.1f} + "
        f"{secs['merge'] / 60:.1f} min of training and {secs['data'] / 60:.1f} min of simulation",
        f"on {info['machine']}.",
        "Losses need no pretrained network (none can be downloaded here, so the paper's VGG-19",
        "perceptual term is replaced): L1 + 0.2 (1 - SSIM) + 0.5 x L1 of image gradients on linear",
        "intensity, plus 0.1 x L1 in the response (log) domain for the refocus net. Final validation",
        f"loss: refocus {val.get('refocus', nan):.4f}, merge {val.get('merge', nan):.4f}. "
        "Loss curves: `loss_curve.png`.",
        "",
        *([f"Run note: {info['note']}", ""] if info.get("note") else []),
        "## Held-out evaluation",
        "",
    ]
    if ev:
        j = ev["_jobs"]
        out += [
            f"{j['n_per_sensor']} jobs per sensor, {j['size']} x {j['size']} px, validation textures, "
            "seeds never used in training,",
            "sensors `SensorConfig.clean()` and `SensorConfig.noisy()`. The learned paths refocus at "
            f"{j['learned_slices']} evenly spaced",
            "times (dense selection); the classical path is the default `PipelineConfig()`. CPU times:",
            "one 2-core CPU shared with other work, PyTorch backend.",
            "",
            _table_md(ev),
        ]
    else:
        out.append("Not evaluated in this run (`--no-eval`).")
    out += ["", "## Files and checksums", "", "| file | sha256 |", "|---|---|"]
    for e in m.values():
        out += [f"| {e['weights']} | `{e['sha256']}` |", f"| {e['onnx']} | `{e['onnx_sha256']}` |"]
    r, g = m["evrefocusnet"], m["evmergenet"]
    out += [
        "",
        f"ONNX opset {r.get('onnx_opset')}, dynamic H and W (and batch / slice count). ONNX Runtime vs",
        f"PyTorch, max abs difference: refocus {r.get('onnx_max_abs_diff', nan):.1e} (tolerance "
        f"{ONNX_TOLERANCE['evrefocusnet']:g}, log units),",
        f"merge {g.get('onnx_max_abs_diff', nan):.1e} (tolerance {ONNX_TOLERANCE['evmergenet']:g}, "
        "weights). Loading verifies every sha256 against",
        "`manifest.json` and reads safetensors only.",
        "",
        "## Limits",
        "",
        "- Trained only on simulated data (thin-lens layered scenes, v2e / DVS-Voltmeter sensors);",
        "  real sensors and optics differ. Fine-tune on real recordings before trusting it on a rig.",
        "- Tiny by design (a CPU training budget of about half an hour); the authors' nets are ~20x",
        "  larger and trained for 100 epochs on 200 Blender scenes.",
        "- The refocus net sees a ~40 px neighbourhood: a global contrast threshold far outside the",
        "  training range is not recovered.",
        "",
    ]
    (models_dir / "MODEL_CARD.md").write_text("\n".join(out))


# ------------------------------------------------------------------------------------------------

def _machine() -> str:
    n = torch.get_num_threads()
    return f"{platform.machine()} CPU, {n} torch thread{'s' if n > 1 else ''}, torch {torch.__version__}"


def _config_from_info(info: dict) -> TrainConfig:
    c = dict(info["config"])
    c["crop"], c["merge_slices"] = tuple(c["crop"]), tuple(c["merge_slices"])
    return TrainConfig(**c)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train EvRefocusNet and EvMergeNet from the simulator.")
    ap.add_argument("--out", default=None, help="models folder to publish into (default: models/)")
    ap.add_argument("--work", default=None, help="checkpoint folder (default .cache/efs_nets/run)")
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work")
    ap.add_argument("--quick", action="store_true", help="tiny run for tests (seconds)")
    ap.add_argument("--steps", type=int, default=None, help="refocus steps (merge gets 40 %% as many)")
    ap.add_argument("--merge-steps", type=int, default=None)
    ap.add_argument("--merge-samples", type=int, default=None, help="crops refocused for merge training")
    ap.add_argument("--note", default=None, help="a line about this run for the model card")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-jobs", type=int, default=None, help="held-out jobs per sensor")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the published nets, rewrite the card")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    cfg = TrainConfig.quick() if args.quick else TrainConfig()
    cfg.seed, cfg.threads = args.seed, args.threads
    if args.steps is not None:
        cfg.refocus_steps = args.steps
        cfg.merge_steps = max(1, int(round(args.steps * 0.4)))
    if args.merge_steps is not None:
        cfg.merge_steps = args.merge_steps
    if args.merge_samples is not None:
        cfg.merge_samples = args.merge_samples
    torch.set_num_threads(cfg.threads)
    models_dir = Path(args.out) if args.out else default_models_dir()
    repo_cache = Path(__file__).resolve().parents[2] / ".cache" / "efs_nets" / "run"
    work = Path(args.work) if args.work else (models_dir / ".work" if args.quick else repo_cache)

    if not args.eval_only:
        trainer = Trainer(cfg, work, resume=args.resume, progress=not args.no_progress)
        trainer.run()
        h = trainer.history
        info = {
            "steps": dict(trainer.step),
            "seconds": {k: round(v, 1) for k, v in trainer.seconds.items()},
            "final_val": {p: h[f"{p}_val"][-1][1] for p in PHASES if h[f"{p}_val"]},
            "config": asdict(cfg),
            "machine": _machine(),
            "response": response_spec(trainer.resp),
            "event_filter_us": trainer.event_filter_us,
            "data": "efs_ros.sim, training textures; validation textures held out",
            "losses": "L1 + 0.2 (1 - SSIM) + 0.5 gradient L1 (+ 0.1 log L1 for refocus); no pretrained nets",
            "note": args.note or "",
        }
        publish({"evrefocusnet": trainer.refocus, "evmergenet": trainer.merge}, models_dir, info=info)
        plot_losses(h, models_dir / "loss_curve.png")
    manifest = read_manifest(models_dir)
    info = manifest["info"]
    run_cfg = _config_from_info(info)
    if args.eval_jobs is not None:
        run_cfg.eval_jobs = args.eval_jobs
    ev = info.get("evaluation")
    if not args.no_eval and run_cfg.eval_jobs > 0:
        from efs_ros.infer.torch_backend import TorchBackend

        ev = evaluate(TorchBackend(models_dir, device="cpu"), run_cfg, progress=not args.no_progress)
        info["evaluation"] = ev
        write_manifest(models_dir, manifest)  # not part of any checksum
        print(_table_md(ev))
    write_model_card(models_dir, run_cfg, info, ev)
    for name in ("evrefocusnet", "evmergenet"):
        load_model(name, models_dir)  # what was published loads and verifies
    print(f"published to {models_dir}: steps {info['steps']}, val {info.get('final_val')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
