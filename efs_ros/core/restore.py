"""What the restoration net sees: the classical estimate and the evidence behind it, per pixel.

The classical path refocuses every pixel to its own time by adding events; what changed by less
than one contrast threshold never fired an event and is still blurred as in the frame. That
blur is a disc whose radius grows with the vergence between the frame's lens state and the
pixel's focus, so a single-pass net gets the frame, the classical image, that vergence, and the
events next to each pixel's own refocus time (where the polarity turns at an edge in focus), and
predicts a correction of the classical image in the sensor's log response.

Built once here and used by the pipeline and by training, so the two cannot drift apart.
"""
from __future__ import annotations

import numpy as np

from .metrics import TEXTURE_MIN_CONTRAST, textured_mask
from .refocus import DEFAULT_RESPONSE

OUTPUT_CHANNELS = 5
"""Corrected log-response RGB, the corrected relative vergence (the plane-6 quantity), and the
log of the relative depth error the net expects there."""

CONFIDENT_DEPTH_ERROR = 0.08
"""Expected relative depth error at which the learned confidence is 0.5 (issue 11's target)."""

FEATURE_CHANNELS = 12
"""response(frame) RGB, response(classical) RGB, relative vergence, signed count frame -> own
time, ON and OFF counts near the own time, all events of the sweep, selection confidence."""

NEAR_FOCUS_FRACTION = 0.05
"""Half-width of the window around each pixel's own time, as a fraction of the sweep."""

DEPTH_MIN_CONTRAST = 0.25 * TEXTURE_MIN_CONTRAST
"""Texture in the restored image below which depth is NaN: a quarter of what the bench calls
textured in the truth, so only truly flat regions go unanswered."""

COUNT_SCALE = 0.25
"""Event counts enter scaled like the other nets' event inputs (a few events -> order one)."""


def vergence_frame(focus_t: np.ndarray, focus_dpt: np.ndarray) -> tuple[float, float]:
    """(lens vergence at the frame, vergence span of the sweep): relative vergence is
    (v - v_frame) / span, so that one number means the same on every rig."""
    return float(np.interp(0.0, focus_t, focus_dpt)), max(float(np.ptp(focus_dpt)), 1e-6)


def _rgb(image: np.ndarray) -> np.ndarray:
    """[3, H, W] float32 of an H x W (grey) or H x W x 3 image."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        return np.repeat(image[None], 3, axis=0)
    return np.transpose(image, (2, 0, 1))


def restore_features(frame: np.ndarray, classical: np.ndarray, refocus_map_s: np.ndarray,
                     confidence: np.ndarray, events: np.ndarray, focus_t: np.ndarray,
                     focus_dpt: np.ndarray, response=DEFAULT_RESPONSE) -> np.ndarray:
    """[FEATURE_CHANNELS, H, W] float32 net input of one job (frame at t = 0, times in s).

    `events` are the ones the classical path used (after its filter); mono images are fed as
    grey RGB."""
    h, w = refocus_map_s.shape
    t_map = np.asarray(refocus_map_s, dtype=np.float64)
    v_frame, v_span = vergence_frame(focus_t, focus_dpt)
    rel_vergence = (np.interp(t_map, focus_t, focus_dpt) - v_frame) / v_span

    signed = np.zeros(h * w)
    near_on = np.zeros(h * w)
    near_off = np.zeros(h * w)
    total = np.zeros(h * w)
    if len(events):
        pix = events["y"].astype(np.int64) * w + events["x"].astype(np.int64)
        t_ev = events["t"].astype(np.float64) * 1e-6
        p = events["p"].astype(np.float64)
        t_own = t_map.ravel()[pix]
        # events between the frame and the pixel's own time, signed as the refocus adds them
        between = np.where(t_own >= 0.0, (t_ev > 0.0) & (t_ev <= t_own), (t_ev > t_own) & (t_ev <= 0.0))
        direction = np.where(t_own >= 0.0, 1.0, -1.0)
        signed = np.bincount(pix, weights=np.where(between, p * direction, 0.0), minlength=h * w)
        half = NEAR_FOCUS_FRACTION * float(focus_t[-1] - focus_t[0])
        near = np.abs(t_ev - t_own) <= half
        near_on = np.bincount(pix, weights=(near & (p > 0)).astype(np.float64), minlength=h * w)
        near_off = np.bincount(pix, weights=(near & (p < 0)).astype(np.float64), minlength=h * w)
        total = np.bincount(pix, minlength=h * w).astype(np.float64)

    planes = [response.forward(_rgb(frame)), response.forward(_rgb(classical)),
              rel_vergence[None],
              (COUNT_SCALE * signed).reshape(1, h, w),
              (COUNT_SCALE * near_on).reshape(1, h, w), (COUNT_SCALE * near_off).reshape(1, h, w),
              np.log1p(total).reshape(1, h, w),
              np.asarray(confidence, dtype=np.float64)[None]]
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in planes], axis=0)


def restored_image(net_output: np.ndarray, like: np.ndarray, response=DEFAULT_RESPONSE) -> np.ndarray:
    """The net's log-response RGB (its first 3 channels) as an image with the layout of `like`
    (grey frames get the mean of the three channels), linear in [0, 1]."""
    rgb = np.clip(response.inverse(np.asarray(net_output[:3], dtype=np.float32)), 0.0, 1.0)
    if np.asarray(like).ndim == 2:
        return rgb.mean(axis=0).astype(np.float32)
    return np.ascontiguousarray(np.transpose(rgb, (1, 2, 0)), dtype=np.float32)


def depth_confidence(log_error: np.ndarray) -> np.ndarray:
    """[0, 1] confidence from the net's expected log relative depth error: 1 / (1 + e / 0.08)."""
    expected = np.exp(np.asarray(log_error, np.float64))
    return (1.0 / (1.0 + expected / CONFIDENT_DEPTH_ERROR)).astype(np.float32)


def restored_depth(rel_vergence: np.ndarray, image: np.ndarray, focus_t: np.ndarray,
                   focus_dpt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(depth m, refocus map s) from the net's relative vergence; depth is NaN only where the
    restored image itself has no texture (nothing to judge focus by) or the vergence is not
    positive (at or beyond infinity). How far to trust each pixel is the confidence map's job."""
    v_frame, v_span = vergence_frame(focus_t, focus_dpt)
    vergence = v_frame + v_span * np.asarray(rel_vergence, dtype=np.float64)
    lo, hi = float(np.min(focus_dpt)), float(np.max(focus_dpt))
    vergence = np.clip(vergence, lo, hi)  # the sweep's range is all the focus it could see
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(vergence > 0, 1.0 / vergence, np.nan)
    depth = np.where(textured_mask(image, min_contrast=DEPTH_MIN_CONTRAST), depth, np.nan)
    order = np.argsort(focus_dpt, kind="stable")
    refocus = np.interp(vergence, np.asarray(focus_dpt)[order], np.asarray(focus_t)[order])
    return depth.astype(np.float32), refocus.astype(np.float32)
