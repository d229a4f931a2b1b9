"""Merging refocused images into one all-in-focus image, without a learned model.

- `merge_focus`: soft per-pixel weights from a focus measure over K refocused images, the same
  weights for R, G and B. Every refocused image is the frame recoloured to a refocused
  luminance, so the merge is one weighted mean of luminances, recoloured once (no K x H x W x 3
  stack).
- `merge_refocus_map`: every pixel refocused to its own time, gathered straight from the
  prefix sums (exact per pixel, no blending).
- `merge_gradient`: the paper's gradient-domain fusion baseline (Sobel energy summed over
  channels, Gaussian 41 x 41 with sigma 7, normalised).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .refocus import Refocuser
from .select import focus_measure


def focus_weights(focus: np.ndarray, power: float = 4.0) -> np.ndarray:
    """[K, H, W] weights summing to 1 per pixel, proportional to (focus / max focus)^power.

    Normalising by the per-pixel maximum first keeps the power from overflowing and makes the
    weights depend only on how the K images compare at that pixel."""
    f = np.maximum(focus, 0.0)
    fmax = f.max(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(fmax > 0, f / fmax, 1.0).astype(np.float32)
    w = r**np.float32(power)
    w /= w.sum(axis=0, keepdims=True)
    return w


def merge_focus(refocuser: Refocuser, lums: np.ndarray, focus: np.ndarray | None = None,
                power: float = 4.0, window: int = 9, presmooth: float = 1.0,
                counts: np.ndarray | None = None, shrink_window: int = 0,
                times_s: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Focus-measure merge of the refocused [K, H, W] luminances (with their signed event
    counts, the focus measure discounts event quantisation noise).

    With `shrink_window` > 1 the merged change from the frame is shrunk as in
    merge_refocus_map, its noise taken at the weighted mean distance from the frame
    (`times_s`, the K times).
    Returns (all-in-focus image in the frame's layout, [K, H, W] weights)."""
    if focus is None:
        noise = refocuser.noise_variance(counts, lums) if counts is not None else None
        focus = focus_measure(lums, window, presmooth, noise)
    w = focus_weights(focus, power)
    merged = np.einsum("khw,khw->hw", w, lums, optimize=True)
    if shrink_window > 1 and refocuser.threshold > 0:
        response, c = refocuser.response, np.float32(refocuser.threshold)
        change = replace_count_outliers((response.forward(merged) - refocuser.log0) / c)
        dist = np.zeros_like(merged) if times_s is None else \
            np.einsum("khw,k->hw", w, np.abs(np.asarray(times_s, np.float32)))
        change = wiener_shrink(change, refocuser.count_noise_variance(change, dist), shrink_window)
        merged = np.clip(response.inverse(refocuser.log0 + c * change), 0.0, 1.0)
    return refocuser.colour(merged), w


def merge_refocus_map(refocuser: Refocuser, refocus_map: np.ndarray, shrink_window: int = 0) -> np.ndarray:
    """Every pixel refocused to its own time in the refocus map.

    With `shrink_window` > 1 the change from the frame is shrunk per pixel by a local Wiener
    gain (the Lee filter: signal power = local mean square change minus the events' noise
    variance, see Refocuser.count_noise_variance): a lone noise event or quantisation step in a
    flat region is pulled back to the frame, while edges, whose change is far above the noise,
    keep theirs. The window pools only the power, not the change, so detail is not blurred."""
    counts = replace_count_outliers(refocuser.counts_at_pixel_times(refocus_map))
    if shrink_window > 1:
        counts = wiener_shrink(counts, refocuser.count_noise_variance(counts, refocus_map), shrink_window)
    return refocuser.colour(refocuser.luminance_from_counts(counts))


OUTLIER_MARGIN = 2.0
"""replace_count_outliers: thresholds beyond the local spread that a lone pixel may not exceed."""
OUTLIER_SPREAD = 3.0
"""... and the multiple of the local median deviation."""


def replace_count_outliers(change: np.ndarray, margin: float = OUTLIER_MARGIN,
                           spread: float = OUTLIER_SPREAD) -> np.ndarray:
    """A pixel whose change from the frame (in thresholds) departs from the median of its 3 x 3
    neighbourhood by more than `spread` x the neighbourhood's median deviation plus `margin`
    takes that median instead.

    Such lone pixels are pixels, not scene: a threshold far below the array's (mismatch), a hot
    pixel or a burst of noise fires many more events than the neighbours that saw the same
    light, and the exponential of Equation 5 turns the excess into a white or black speck that
    costs more PSNR than the rest of the refocusing gains. Defocus changes are smooth over a
    pixel's neighbourhood, even where the sharp image has an edge, so real change survives."""
    d = np.asarray(change, dtype=np.float32)
    med = ndimage.median_filter(d, size=3, mode="reflect")
    dev = np.abs(d - med)
    local = ndimage.median_filter(dev, size=3, mode="reflect")
    return np.where(dev > spread * local + margin, med, d).astype(np.float32)


def wiener_shrink(change: np.ndarray, noise_var: np.ndarray, window: int) -> np.ndarray:
    """change x s / (s + n) per pixel, s = max(local mean of change^2 - local mean of n, 0)."""
    d = np.asarray(change, dtype=np.float32)
    n = np.asarray(noise_var, dtype=np.float32)
    power = ndimage.uniform_filter(d * d, window, mode="reflect")
    signal = np.maximum(power - ndimage.uniform_filter(n, window, mode="reflect"), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(signal + n > 0, signal / (signal + n), 1.0)
    return (d * gain).astype(np.float32)


def gradient_fusion_weights(images: np.ndarray) -> np.ndarray:
    """The paper's baseline weights for a [K, H, W, C] (or [K, H, W]) stack: Sobel energy summed
    over channels, blurred with a 41 x 41 Gaussian of sigma 7, normalised over K."""
    x = images if images.ndim == 4 else images[..., None]
    energy = np.zeros(x.shape[:3], np.float32)
    for c in range(x.shape[3]):
        ch = x[..., c]
        gx = ndimage.sobel(ch, axis=2, mode="reflect")
        gy = ndimage.sobel(ch, axis=1, mode="reflect")
        energy += gx * gx + gy * gy
    # truncate = 20 / 7 gives a radius of 20, i.e. the 41 x 41 kernel.
    energy = ndimage.gaussian_filter(energy, (0, 7.0, 7.0), truncate=20.0 / 7.0, mode="reflect")
    total = energy.sum(axis=0, keepdims=True)
    k = energy.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, energy / total, 1.0 / k).astype(np.float32)


def merge_gradient(refocuser: Refocuser, lums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient-domain fusion baseline over the refocused images with the given luminances."""
    images = refocuser.colour(lums)
    w = gradient_fusion_weights(images)
    out = (w[..., None] * images).sum(axis=0) if images.ndim == 4 else (w * images).sum(axis=0)
    return np.clip(out, 0.0, 1.0).astype(np.float32), w


def merge_stack(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted sum of an [N, C, H, W] linear stack with [N, H, W] weights -> H x W x C (or H x W)."""
    out = np.einsum("nchw,nhw->hwc", stack, weights, optimize=True)
    out = out[..., 0] if out.shape[2] == 1 else out
    return np.clip(out, 0.0, 1.0).astype(np.float32)
