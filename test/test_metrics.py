"""PSNR, SSIM, MS-SSIM and depth AbsRel: known cases, and scikit-image as an independent check."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from efs_ros.core.metrics import abs_rel, ms_ssim, ms_ssim_scales, psnr, ssim


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.random((96, 80, 3)), (1.5, 1.5, 0))
    a = (a - a.min()) / np.ptp(a)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    return a, b


def test_psnr_known_values(images):
    a, _ = images
    assert psnr(a, a) == float("inf")
    assert psnr(np.zeros((8, 8)), np.full((8, 8), 0.1)) == pytest.approx(20.0)
    assert psnr(np.zeros((8, 8)), np.full((8, 8), 25.5), data_range=255) == pytest.approx(20.0)


def test_psnr_matches_skimage(images):
    a, b = images
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-9)


def _skimage_ssim(a, b):
    kw = dict(data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    if a.ndim == 3:
        kw["channel_axis"] = 2
    return structural_similarity(a, b, **kw)


def test_ssim_matches_skimage_on_colour_and_mono(images):
    a, b = images
    assert ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=1e-6)
    assert ssim(a[..., 1], b[..., 1]) == pytest.approx(_skimage_ssim(a[..., 1], b[..., 1]), abs=1e-6)


def test_ssim_known_cases(images):
    a, _ = images
    assert ssim(a, a) == pytest.approx(1.0)
    # A constant offset leaves structure and contrast alone: only the luminance term drops.
    shifted = ssim(a, np.clip(a + 0.2, 0, 2))
    assert 0.5 < shifted < 1.0
    # Inverting the image anti-correlates it.
    assert ssim(a, 1.0 - a) < 0.0


def test_ms_ssim_scales_fall_back_for_small_images():
    assert ms_ssim_scales(256, 256) == 5
    assert ms_ssim_scales(64, 64) == 3
    assert ms_ssim_scales(20, 300) == 1


def test_ms_ssim_is_ssim_when_only_one_scale_fits(images):
    a, b = images
    a, b = a[:20, :20], b[:20, :20]
    assert ms_ssim_scales(20, 20) == 1
    assert ms_ssim(a, b) == pytest.approx(ssim(a, b), abs=1e-12)


def test_ms_ssim_orders_degradations(images):
    a, _ = images
    rng = np.random.default_rng(1)
    scores = [ms_ssim(a, np.clip(a + rng.normal(0, s, a.shape), 0, 1)) for s in (0.0, 0.02, 0.05, 0.1)]
    assert scores[0] == pytest.approx(1.0)
    assert scores == sorted(scores, reverse=True)
    # A blur hurts fine scales only; MS-SSIM, weighting coarse scales, is kinder to it than SSIM.
    blurred = ndimage.gaussian_filter(a, (1.5, 1.5, 0))
    assert ms_ssim(a, blurred) > ssim(a, blurred)


def test_ms_ssim_matches_a_direct_two_scale_computation():
    """For a 2-scale image the product formula, written out with skimage SSIM pieces."""
    rng = np.random.default_rng(2)
    a = ndimage.gaussian_filter(rng.random((40, 40)), 1.0)
    b = np.clip(a + rng.normal(0, 0.03, a.shape), 0, 1)
    assert ms_ssim_scales(40, 40) == 2
    w = np.array([0.0448, 0.2856])
    w /= w.sum()

    def cs(x, y):
        # contrast-structure = SSIM / luminance term, from skimage's full SSIM map and the means
        _, smap = structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True)
        mx = ndimage.gaussian_filter(x, 1.5, truncate=3.5, mode="reflect")
        my = ndimage.gaussian_filter(y, 1.5, truncate=3.5, mode="reflect")
        lum = (2 * mx * my + 1e-4) / (mx**2 + my**2 + 1e-4)
        return float((smap / lum)[5:-5, 5:-5].mean())

    def down(x):
        return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])

    s2 = structural_similarity(down(a), down(b), data_range=1.0, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False)
    expect = cs(a, b) ** w[0] * s2 ** w[1]
    assert ms_ssim(a, b) == pytest.approx(expect, abs=1e-6)


def test_metrics_reject_mismatched_shapes(images):
    a, _ = images
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, a[:-1])
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(a, a[..., :2])
    with pytest.raises(ValueError, match="depth shapes"):
        abs_rel(np.ones((3, 3)), np.ones((3, 4)))


def test_abs_rel_and_coverage():
    gt = np.array([[1.0, 2.0], [4.0, np.nan]])
    pred = np.array([[1.5, np.nan], [3.0, 7.0]])
    value, coverage = abs_rel(pred, gt)
    assert value == pytest.approx((0.5 / 1.0 + 1.0 / 4.0) / 2)
    assert coverage == pytest.approx(2 / 3)  # 3 pixels have truth, 2 of them a prediction
    value, coverage = abs_rel(np.full((2, 2), np.nan), gt)
    assert np.isnan(value) and coverage == 0.0
    assert abs_rel(gt, gt) == (0.0, 1.0)
