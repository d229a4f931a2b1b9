"""Image and depth quality metrics, written in numpy/scipy so that evaluation needs no extra package.

SSIM follows Wang et al. 2004 as most papers report it: Gaussian window 11 x 11 (sigma 1.5,
truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, population (not sample) statistics, the border
of half a window left out of the mean. Colour images are scored per channel and the channel
scores averaged (what skimage does with channel_axis), not on luminance.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .refocus import LUMA_WEIGHTS

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5 -> an 11 x 11 window
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected H x W or H x W x C images, got shape {a.shape}")
    return a, b


def psnr(a, b, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels (inf for identical images)."""
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def _blur(x: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(x, SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")


def _ssim_maps(a: np.ndarray, b: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    """SSIM and contrast-structure maps of two single-channel images."""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_a, mu_b = _blur(a), _blur(b)
    var_a = _blur(a * a) - mu_a * mu_a
    var_b = _blur(b * b) - mu_b * mu_b
    cov = _blur(a * b) - mu_a * mu_b
    cs = (2.0 * cov + c2) / (var_a + var_b + c2)
    lum = (2.0 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1)
    return lum * cs, cs


def _crop_mean(m: np.ndarray) -> float:
    r = SSIM_RADIUS
    if m.shape[0] > 2 * r and m.shape[1] > 2 * r:
        m = m[r:-r, r:-r]
    return float(m.mean())


def _channels(x: np.ndarray) -> list[np.ndarray]:
    return [x] if x.ndim == 2 else [x[..., i] for i in range(x.shape[2])]


def ssim(a, b, data_range: float = 1.0) -> float:
    """Mean SSIM (mean over channels for colour images)."""
    a, b = _pair(a, b)
    return float(np.mean([_crop_mean(_ssim_maps(ca, cb, data_range)[0])
                          for ca, cb in zip(_channels(a), _channels(b), strict=True)]))


def _downsample2(x: np.ndarray) -> np.ndarray:
    """2 x 2 average pooling (odd trailing row/column dropped), as in the reference MS-SSIM."""
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:h, :w]
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def ms_ssim_scales(height: int, width: int, max_scales: int = 5) -> int:
    """How many scales fit: the coarsest must still hold a full 11 x 11 window."""
    n, h, w = 1, height, width
    while n < max_scales and min(h, w) // 2 >= 2 * SSIM_RADIUS + 1:
        h, w, n = h // 2, w // 2, n + 1
    return n


def ms_ssim(a, b, data_range: float = 1.0) -> float:
    """Multi-scale SSIM (Wang, Simoncelli, Bovik 2003) with the standard five weights.

    Images too small for five scales use as many as fit, with the weights of those scales
    renormalised to sum to one. Negative contrast-structure terms are clipped to 0 so that the
    fractional powers stay real. Colour: mean over channels.
    """
    a, b = _pair(a, b)
    n = ms_ssim_scales(a.shape[0], a.shape[1])
    weights = np.asarray(MS_SSIM_WEIGHTS[:n], dtype=np.float64)
    weights /= weights.sum()
    scores = []
    for ca, cb in zip(_channels(a), _channels(b), strict=True):
        value = 1.0
        for level in range(n):
            s_map, cs_map = _ssim_maps(ca, cb, data_range)
            term = _crop_mean(s_map) if level == n - 1 else _crop_mean(cs_map)
            value *= max(term, 0.0) ** weights[level]
            if level < n - 1:
                ca, cb = _downsample2(ca), _downsample2(cb)
        scores.append(value)
    return float(np.mean(scores))


def abs_rel(pred, gt, mask=None) -> tuple[float, float]:
    """Depth AbsRel = mean |pred - gt| / gt over pixels finite (and gt > 0) in both, and coverage.

    Coverage is the fraction of the pixels with valid ground truth that also have a prediction,
    so that a method cannot look good by answering only where it is easy without saying so.
    With `mask` only those pixels count (e.g. textured_mask: where depth can be judged at all).
    Returns (nan, 0.0) when no pixel is valid in both.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"depth shapes differ: {pred.shape} vs {gt.shape}")
    valid_gt = np.isfinite(gt) & (gt > 0)
    if mask is not None:
        valid_gt &= np.asarray(mask, dtype=bool)
    both = valid_gt & np.isfinite(pred)
    n_gt = int(valid_gt.sum())
    if not both.any():
        return float("nan"), 0.0
    value = float(np.mean(np.abs(pred[both] - gt[both]) / gt[both]))
    return value, float(both.sum() / n_gt)


TEXTURE_MIN_CONTRAST = 0.05
"""textured_mask: log-luminance contrast (local RMS gradient x window radius) that counts as
texture: a quarter of a typical event threshold across the window."""


def textured_mask(image, window: int = 9, min_contrast: float = TEXTURE_MIN_CONTRAST) -> np.ndarray:
    """[H, W] bool: pixels whose window x window neighbourhood of the (sharp) image has texture,
    i.e. where focus, and so depth, can be judged at all. Judged in log luminance, so that dark
    and bright texture count alike."""
    x = np.asarray(image, dtype=np.float64)
    lum = x @ LUMA_WEIGHTS.astype(np.float64) if x.ndim == 3 else x
    log = np.log(np.clip(lum, 0.0, None) + 1.0 / 255.0)
    gy, gx = np.gradient(log)
    power = ndimage.uniform_filter(gx * gx + gy * gy, window, mode="reflect")
    return np.sqrt(np.maximum(power, 0.0)) * (window // 2) >= min_contrast
