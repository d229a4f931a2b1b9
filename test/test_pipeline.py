"""Refocusing, refocus-time selection, merging and depth, on sweeps whose events are generated
exactly from known log-intensity changes (and on the focal-sweep simulator once it exists)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from efs_ros.core.events import make_events
from efs_ros.core.job import SweepJob
from efs_ros.core.metrics import psnr
from efs_ros.core.refocus import DEFAULT_LOG_EPS

# --------------------------------------------------------------------------- synthetic sweeps


def _texture(rng, h, w, scale):
    tex = ndimage.gaussian_filter(rng.random((h, w)), scale)
    tex = (tex - tex.min()) / (np.ptp(tex) + 1e-12)
    return (0.08 + 0.84 * tex).astype(np.float32)


def synthetic_sweep(h=64, w=64, n_steps=160, threshold=0.2, threshold_sigma=0.0, seed=0,
                    depths=(0.5, 2.0), layout="halves", frame_frac=0.4, span_s=0.1,
                    dpt_range=(0.2, 2.8), blur_px_per_dpt=2.5, eps=DEFAULT_LOG_EPS,
                    noise_events_per_px=0.0, rgb=True):
    """A focal sweep over textured fronto-parallel layers with exact events.

    Defocus is a Gaussian of sigma blur_px_per_dpt * |vergence - 1/depth|, applied to each layer's
    light (so light is conserved). Events are the exact crossings of log(L + eps) through
    per-pixel thresholds, linearly interpolated in time between render steps. Returns a SweepJob
    with ground truth, and the per-pixel thresholds.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    if layout == "halves":
        masks = [xx < w // 2, xx >= w // 2]
    else:  # a near square in front of a far background
        near = (abs(yy - h / 2) < h / 4) & (abs(xx - w / 2) < w / 4)
        masks = [near, ~near]
    lum_tex = [_texture(rng, h, w, 1.0 + i) for i in range(len(masks))]
    tints = [np.array([1.0, 0.8, 0.6]), np.array([0.6, 0.8, 1.0])]
    gt_depth = np.full((h, w), np.nan, np.float32)
    for m, d in zip(masks, depths, strict=True):
        gt_depth[m] = d
    t = np.linspace(-frame_frac * span_s, (1 - frame_frac) * span_s, n_steps)
    dpt = np.interp(t, [t[0], t[-1]], list(dpt_range))

    def render_lum(v):
        out = np.zeros((h, w), np.float64)
        for m, tex, d in zip(masks, lum_tex, depths, strict=True):
            sigma = blur_px_per_dpt * abs(v - 1.0 / d)
            out += ndimage.gaussian_filter(tex * m, sigma, mode="reflect") if sigma > 0.05 else tex * m
        return out

    def render_rgb(v):
        out = np.zeros((h, w, 3), np.float64)
        for m, tex, d, tint in zip(masks, lum_tex, depths, tints, strict=True):
            # Tinted so that the layer's luminance equals tex (Rec. 709 weights).
            col = tint / (tint @ np.array([0.2126, 0.7152, 0.0722]))
            layer = (tex * m)[..., None] * col
            sigma = blur_px_per_dpt * abs(v - 1.0 / d)
            if sigma > 0.05:
                layer = ndimage.gaussian_filter(layer, (sigma, sigma, 0), mode="reflect")
            out += layer
        return np.clip(out, 0, 1)

    c_px = np.clip(rng.normal(threshold, threshold_sigma, (h, w)), 0.05, None) if threshold_sigma \
        else np.full((h, w), threshold)
    ref = np.log(render_lum(dpt[0]) + eps)
    prev = ref.copy()
    ts, xs, ys, ps = [], [], [], []
    for i in range(1, n_steps):
        cur = np.log(render_lum(dpt[i]) + eps)
        d = cur - ref
        n = np.floor(np.abs(d) / c_px).astype(np.int64).ravel()
        idx = np.flatnonzero(n)
        if idx.size:
            reps = n[idx]
            pix = np.repeat(idx, reps)
            j = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps) + 1
            sgn = np.sign(d.ravel()[pix])
            level = ref.ravel()[pix] + j * c_px.ravel()[pix] * sgn
            a, b = prev.ravel()[pix], cur.ravel()[pix]
            frac = np.clip((level - a) / np.where(b != a, b - a, 1.0), 0, 1)
            ts.append(t[i - 1] + frac * (t[i] - t[i - 1]))
            ys.append(pix // w)
            xs.append(pix % w)
            ps.append(sgn)
            ref.ravel()[idx] += n[idx] * c_px.ravel()[idx] * np.sign(d.ravel()[idx])
        prev = cur
    if noise_events_per_px > 0:
        k = rng.poisson(noise_events_per_px * h * w)
        ts.append(rng.uniform(t[0], t[-1], k))
        ys.append(rng.integers(0, h, k))
        xs.append(rng.integers(0, w, k))
        ps.append(rng.choice([-1, 1], k))
    tt = np.concatenate(ts) if ts else np.zeros(0)
    order = np.argsort(tt, kind="stable")
    events = make_events(np.round(tt * 1e6).astype(np.int64)[order], np.concatenate(xs)[order],
                         np.concatenate(ys)[order], np.concatenate(ps)[order])
    v0 = float(np.interp(0.0, t, dpt))
    if rgb:
        frame = render_rgb(v0).astype(np.float32)
        aif = np.clip(sum((tex * m)[..., None] * (tint / (tint @ np.array([0.2126, 0.7152, 0.0722])))
                          for m, tex, tint in zip(masks, lum_tex, tints, strict=True)), 0, 1).astype(np.float32)
    else:
        frame = render_lum(v0).astype(np.float32)
        aif = sum(tex * m for m, tex in zip(masks, lum_tex, strict=True)).astype(np.float32)
    job = SweepJob(stamp_ns=1_000_000_000, frame=frame, encoding="rgb8" if rgb else "mono8",
                   events=events, focus_t=t, focus_dpt=dpt, ground_truth_aif=aif,
                   ground_truth_depth=gt_depth)
    return job, c_px, masks


def sharpness(img, mask):
    """Gradient energy inside a mask (eroded so the layer boundary does not count)."""
    lum = img if img.ndim == 2 else img @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    gy, gx = np.gradient(lum.astype(np.float64))
    inner = ndimage.binary_erosion(mask, iterations=4)
    return float(np.mean((gx**2 + gy**2)[inner]))


_ = (pytest, psnr)
