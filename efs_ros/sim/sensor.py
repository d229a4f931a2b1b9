"""Event sensor models: v2e-style DVS pixels, DVS-Voltmeter's stochastic pixel, and an ideal one.

The input is a sequence of luminance images (linear, 1.0 = full scale; RGB is reduced with
Rec. 709 weights) at increasing times. Between two images the pixel signal is taken as linear
in time, so event timestamps are interpolated inside a step rather than snapped to it. Every
model is vectorised over pixels; Python loops run only over time steps (and, inside a step, over
"the k-th event of a pixel" rounds).

Models (REFERENCE.md):
- "ideal": log intensity (lin-log), fixed thresholds, one event per threshold crossing at the
  exact interpolated time; no filter, mismatch, refractory period or noise. Summing
  polarities x threshold recovers the log change to within one threshold.
- "v2e" (Hu, Liu, Delbruck 2021): lin-log (linear below 20 DN), first-order photoreceptor
  low-pass whose cutoff scales with intensity (slower in the dark), per-pixel thresholds
  N(theta, sigma) clipped positive, several events per step at interpolated times, refractory
  period (the reference tracks the input while refractory), leak (the reference drifts down at
  leak_hz x theta_on per second, spread 10 % over pixels: ON events at ~leak_hz in a static
  scene) and shot noise (Poisson, rate shot_hz in the dark falling to a quarter at full scale,
  random polarity; the pixel resets to its current level).
- "voltmeter" (Lin et al. ECCV 2022): per pixel the voltage is Brownian motion with drift
  mu = k1 (dL/dt)/(L + k2) + k4 + k5 L and diffusion sigma = k3 sqrt(L)/(L + k2) + k6, with L in
  DN and t in microseconds, thresholds +-1. The next event's polarity is drawn from the
  two-sided first-passage probability and its delay from the inverse Gaussian
  IG(mean a/|mu|, shape a^2/sigma^2) (a = distance to that threshold); a pixel that does not
  fire before the step ends carries the fraction of the way it travelled.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from efs_ros.core.events import EVENT_DTYPE, empty_events

from .optics import luminance

SENSOR_MODELS = ("v2e", "voltmeter", "ideal")
DVS346_K = (5.265, 20.0, 1e-4, 1e-7, 5e-9, 1e-5)
DVS240_K = (4.424, 23.0, 2e-4, 1e-7, 5e-8, 1e-5)
SHOT_BRIGHT_FACTOR = 0.25
"""Shot-noise rate at full scale relative to the dark rate (v2e: noise is worst in the dark)."""
MIN_THRESHOLD = 0.01


@dataclass
class SensorConfig:
    model: str = "v2e"
    threshold_pos: float = 0.2
    threshold_neg: float = 0.2
    sigma_threshold: float = 0.03
    cutoff_hz: float = 300.0
    """Photoreceptor 3 dB cutoff at full scale; 0 disables the low-pass."""
    leak_hz: float = 0.01
    shot_hz: float = 0.001
    refractory_us: float = 500.0
    leak_spread: float = 0.1
    k1: float = DVS346_K[0]
    k2: float = DVS346_K[1]
    k3: float = DVS346_K[2]
    k4: float = DVS346_K[3]
    k5: float = DVS346_K[4]
    k6: float = DVS346_K[5]
    dn_scale: float = 255.0
    """Digital numbers per unit linear intensity (v2e and the voltmeter constants work in DN)."""
    lin_log_dn: float = 20.0
    """Below this many DN the log response is linear (v2e), avoiding log(0)."""

    def __post_init__(self):
        if self.model not in SENSOR_MODELS:
            raise ValueError(f"sensor model must be one of {SENSOR_MODELS}, got {self.model!r}")
        if self.threshold_pos <= 0 or self.threshold_neg <= 0:
            raise ValueError(f"thresholds must be positive, got {self.threshold_pos}, {self.threshold_neg}")
        for name in ("sigma_threshold", "cutoff_hz", "leak_hz", "shot_hz", "refractory_us", "leak_spread"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    # Presets --------------------------------------------------------------------------------
    @classmethod
    def clean(cls) -> SensorConfig:
        """v2e defaults: well-matched thresholds, fast photoreceptor, almost no noise."""
        return cls()

    @classmethod
    def noisy(cls) -> SensorConfig:
        """v2e's 'noisy' preset: more mismatch, slow photoreceptor, leak and shot noise."""
        return cls(sigma_threshold=0.05, cutoff_hz=30.0, leak_hz=0.1, shot_hz=5.0)

    @classmethod
    def ideal(cls, threshold: float = 0.2) -> SensorConfig:
        return cls(model="ideal", threshold_pos=threshold, threshold_neg=threshold, sigma_threshold=0.0,
                   cutoff_hz=0.0, leak_hz=0.0, shot_hz=0.0, refractory_us=0.0)

    @classmethod
    def dvs346(cls) -> SensorConfig:
        """DVS-Voltmeter with its DAVIS346 constants."""
        return cls(model="voltmeter", refractory_us=0.0, **dict(zip(("k1", "k2", "k3", "k4", "k5", "k6"),
                                                                    DVS346_K, strict=True)))

    @classmethod
    def dvs240(cls) -> SensorConfig:
        return cls(model="voltmeter", refractory_us=0.0, **dict(zip(("k1", "k2", "k3", "k4", "k5", "k6"),
                                                                    DVS240_K, strict=True)))

    @classmethod
    def randomized(cls, rng: np.random.Generator, models=("v2e", "voltmeter")) -> SensorConfig:
        """A random plausible sensor for training (the paper randomises all six voltmeter k's)."""
        model = str(models[int(rng.integers(len(models)))])
        if model == "voltmeter":
            lo = np.minimum(DVS346_K, DVS240_K)
            hi = np.maximum(DVS346_K, DVS240_K)
            ks = np.exp(rng.uniform(np.log(lo) - 0.3, np.log(hi) + 0.3))
            return cls(model="voltmeter", refractory_us=0.0,
                       **dict(zip(("k1", "k2", "k3", "k4", "k5", "k6"), map(float, ks), strict=True)))
        theta = rng.uniform(0.15, 0.35)
        return cls(model=model, threshold_pos=theta, threshold_neg=theta * rng.uniform(0.8, 1.25),
                   sigma_threshold=rng.uniform(0.0, 0.06),
                   cutoff_hz=float(np.exp(rng.uniform(np.log(30.0), np.log(1000.0)))),
                   leak_hz=float(np.exp(rng.uniform(np.log(0.005), np.log(0.5)))),
                   shot_hz=float(np.exp(rng.uniform(np.log(1e-3), np.log(5.0)))),
                   refractory_us=rng.uniform(0.0, 1000.0))

    def with_(self, **changes) -> SensorConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    # Documented noise laws (used by the model and by tests) ------------------------------------
    def shot_rate_hz(self, lum01) -> np.ndarray:
        """Per-pixel shot-noise event rate (ON + OFF) at linear luminance lum01."""
        lum = np.clip(np.asarray(lum01, dtype=np.float64), 0.0, 1.0)
        return self.shot_hz * (1.0 + (SHOT_BRIGHT_FACTOR - 1.0) * lum)


def lin_log(dn: np.ndarray, linear_below: float = 20.0) -> np.ndarray:
    """Log intensity with a linear segment below linear_below DN (continuous at the joint)."""
    dn = np.asarray(dn, dtype=np.float64)
    slope = math.log(linear_below) / linear_below
    return np.where(dn < linear_below, dn * slope, np.log(np.maximum(dn, linear_below)))


def inverse_lin_log(y: np.ndarray, linear_below: float = 20.0) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    joint = math.log(linear_below)
    return np.where(y < joint, y * linear_below / joint, np.exp(np.maximum(y, joint)))


def _events_from_columns(t, pix, p, width) -> np.ndarray:
    out = np.empty(t.size, dtype=EVENT_DTYPE)
    out["t"] = np.rint(t).astype(np.int64)
    out["x"] = (pix % width).astype(np.uint16)
    out["y"] = (pix // width).astype(np.uint16)
    out["p"] = p.astype(np.int8)
    return out


def _repeat_ramp(counts: np.ndarray) -> np.ndarray:
    """For counts [2, 3] -> [0, 1, 0, 1, 2]: the index of each repeat within its group."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - starts


class EventSensor:
    """A stateful event camera: feed luminance images in time order, get events per step.

    Keeping the state between calls lets a long recording be simulated in pieces (the rig
    runs it continuously over many sweeps).
    """

    def __init__(self, config: SensorConfig, height: int, width: int, rng: np.random.Generator):
        self.config = config
        self.height, self.width = int(height), int(width)
        self.rng = rng
        n = self.height * self.width
        c = config
        if c.model == "v2e":
            self.theta_pos = np.maximum(rng.normal(c.threshold_pos, c.sigma_threshold, n), MIN_THRESHOLD)
            self.theta_neg = np.maximum(rng.normal(c.threshold_neg, c.sigma_threshold, n), MIN_THRESHOLD)
            self.leak_rate = c.leak_hz * np.maximum(1.0 + c.leak_spread * rng.standard_normal(n), 0.0)
        else:
            self.theta_pos = np.full(n, c.threshold_pos if c.model == "ideal" else 1.0)
            self.theta_neg = np.full(n, c.threshold_neg if c.model == "ideal" else 1.0)
            self.leak_rate = np.zeros(n)
        self.t_us: float | None = None

    # ------------------------------------------------------------------------------------------
    def _to_dn(self, frame: np.ndarray, log_input: bool) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim == 3 and frame.shape[-1] == 3:
            if log_input:
                raise ValueError("log input must be a single-channel H x W image")
            frame = luminance(frame)
        if frame.shape != (self.height, self.width):
            raise ValueError(f"frame shape {frame.shape} != sensor {(self.height, self.width)}")
        if log_input:
            return inverse_lin_log(frame.ravel(), self.config.lin_log_dn)
        return np.maximum(frame.ravel().astype(np.float64), 0.0) * self.config.dn_scale

    def reset(self, frame: np.ndarray, t_us: float, log_input: bool = False) -> None:
        """Start from a steady state at this image (no events for it)."""
        dn = self._to_dn(frame, log_input)
        c = self.config
        self.t_us = float(t_us)
        self.dn = dn
        if c.model == "voltmeter":
            self.voltage = np.zeros(dn.size)
            self.ready_at = np.full(dn.size, -np.inf)
            return
        log = lin_log(dn, c.lin_log_dn)
        self.lp = log.copy()
        self.base = log.copy()
        if c.model == "v2e":  # unknown reset state at power-up: leak events get a random phase
            self.base -= self.rng.uniform(0.0, 1.0, dn.size) * self.theta_pos
        self.refractory_until = np.full(dn.size, -np.inf)

    def step(self, frame: np.ndarray, t_us: float, log_input: bool = False) -> np.ndarray:
        """Advance to the image at t_us; returns the events in (previous t, t_us], sorted by t."""
        if self.t_us is None:
            self.reset(frame, t_us, log_input)
            return empty_events()
        t_us = float(t_us)
        if not t_us > self.t_us:
            raise ValueError(f"sensor time must increase: {t_us} after {self.t_us}")
        dn = self._to_dn(frame, log_input)
        if self.config.model == "voltmeter":
            ev = self._step_voltmeter(dn, t_us)
        else:
            ev = self._step_dvs(dn, t_us)
        self.t_us = t_us
        self.dn = dn
        if ev.size > 1:
            ev = ev[np.argsort(ev["t"], kind="stable")]
        return ev

    # ------------------------------------------------------------------------------------------
    def _step_dvs(self, dn: np.ndarray, t1: float) -> np.ndarray:
        """Work on d = filtered log - reference, which is linear in time inside the step: the
        input ramps and the leak lowers the reference at a constant rate."""
        c = self.config
        t0 = self.t_us
        dt = t1 - t0
        target = lin_log(dn, c.lin_log_dn)
        lp0 = self.lp
        if c.model == "v2e" and c.cutoff_hz > 0:
            # First-order IIR; the photoreceptor is faster when brighter (v2e: (I + 20) / 275 of f3dB).
            inten = (dn + c.lin_log_dn) / (c.dn_scale + c.lin_log_dn)
            eps = np.minimum(2.0 * np.pi * c.cutoff_hz * inten * dt * 1e-6, 1.0)
            lp1 = lp0 + eps * (target - lp0)
        else:
            lp1 = target
        leak = self.leak_rate * self.theta_pos * 1e-6 if c.model == "v2e" else 0.0  # reference drift per us
        slope = (lp1 - lp0) / dt + leak
        refr = c.refractory_us if c.model == "v2e" else 0.0

        # A pixel is live from ts on; while refractory its reference follows the input (d = 0).
        ts = np.maximum(self.refractory_until, t0)
        live = ts < t1
        woke = live & (self.refractory_until > t0)
        d0 = np.where(woke, 0.0, lp0 - self.base + leak * (ts - t0))
        d1 = d0 + slope * (t1 - ts)
        d_end = np.where(live, d1, 0.0)

        chunks = []
        for sign, theta in ((1.0, self.theta_pos), (-1.0, self.theta_neg)):
            idx = np.flatnonzero(live & (sign * d1 >= theta))
            if idx.size == 0:
                continue
            th = theta[idx]
            speed = np.maximum(sign * slope[idx], 1e-12)
            t_first = ts[idx] + np.maximum(th - sign * d0[idx], 0.0) / speed
            spacing = refr + th / speed
            n = np.maximum(np.floor((t1 - t_first) / spacing).astype(np.int64) + 1, 1)
            t_ev = np.repeat(t_first, n) + _repeat_ramp(n) * np.repeat(spacing, n)
            pix = np.repeat(idx, n)
            chunks.append(_events_from_columns(t_ev, pix, np.full(pix.size, sign), self.width))
            if refr > 0:
                wake = t_first + (n - 1) * spacing + refr
                d_end[idx] = np.where(wake <= t1, slope[idx] * (t1 - wake), 0.0)
                self.refractory_until[idx] = wake
            else:
                d_end[idx] = d1[idx] - sign * n * th
        self.base = lp1 - d_end
        self.lp = lp1
        if c.model == "v2e" and c.shot_hz > 0:
            chunks.append(self._shot_noise(dn, lp1, t0, t1))
        if not chunks:
            return empty_events()
        return np.concatenate(chunks)

    def _shot_noise(self, dn, lp1, t0, t1) -> np.ndarray:
        c = self.config
        lum = np.clip(dn / c.dn_scale, 0.0, 1.0)
        # The rate law is affine in luminance, so the total needs only a sum (no cumsum per step).
        total_hz = c.shot_hz * (lum.size + (SHOT_BRIGHT_FACTOR - 1.0) * float(lum.sum()))
        n = int(self.rng.poisson(total_hz * (t1 - t0) * 1e-6))
        if n == 0:
            return empty_events()
        cum = np.cumsum(c.shot_rate_hz(lum))
        pix = np.searchsorted(cum, self.rng.uniform(0.0, cum[-1], n), side="right")
        pix = np.minimum(pix, cum.size - 1)
        t = self.rng.uniform(t0, t1, n)
        p = np.where(self.rng.random(n) < 0.5, 1, -1)
        self.base[pix] = lp1[pix]  # the pixel resets to wherever its input is
        return _events_from_columns(t, pix, p, self.width)

    # ------------------------------------------------------------------------------------------
    def _step_voltmeter(self, dn: np.ndarray, t1: float) -> np.ndarray:
        c = self.config
        t0 = self.t_us
        dt = t1 - t0
        light = 0.5 * (dn + self.dn)
        mu = c.k1 * (dn - self.dn) / dt / (light + c.k2) + c.k4 + c.k5 * light
        sigma = c.k3 * np.sqrt(light) / (light + c.k2) + c.k6
        t_now = np.maximum(self.ready_at, t0)
        # Pixels that cannot reach a threshold this step (beyond drift + 6 sigma of diffusion)
        # only drift; sampling them would cost most of the time and change nothing measurable.
        span = np.maximum(t1 - t_now, 0.0)
        reach = np.abs(mu) * span + 6.0 * sigma * np.sqrt(span)
        near = (t_now < t1) & (1.0 - np.abs(self.voltage) <= reach)
        far = ~near
        self.voltage[far] += mu[far] * span[far]
        idx = np.flatnonzero(near)
        t_now = t_now[idx]
        chunks = []
        for _ in range(100000):
            if idx.size == 0:
                break
            v, m, s = self.voltage[idx], mu[idx], sigma[idx]
            up, down = 1.0 - v, 1.0 + v  # distances to the ON and OFF thresholds
            p_on = _first_passage_up(m, s, up, down)
            on = self.rng.random(idx.size) < p_on
            dist = np.where(on, up, down)
            tau = _first_passage_time(self.rng, dist, np.abs(m), s)
            t_ev = t_now + tau
            fires = t_ev <= t1
            # Not firing before t1: keep the fraction of the way travelled (DVS-Voltmeter).
            quiet = ~fires
            frac = np.where(np.isfinite(tau[quiet]), (t1 - t_now[quiet]) / tau[quiet], 0.0)
            self.voltage[idx[quiet]] = v[quiet] + np.where(on[quiet], 1.0, -1.0) * dist[quiet] * frac
            if not np.any(fires):
                break
            fi = idx[fires]
            chunks.append(_events_from_columns(t_ev[fires], fi, np.where(on[fires], 1, -1), self.width))
            self.voltage[fi] = 0.0
            ready = t_ev[fires] + c.refractory_us
            self.ready_at[fi] = ready
            keep = ready < t1
            idx, t_now = fi[keep], ready[keep]
        if not chunks:
            return empty_events()
        return np.concatenate(chunks)


def _first_passage_up(mu, sigma, up, down) -> np.ndarray:
    """P(Brownian motion with drift mu, diffusion sigma, from 0 hits +up before -down)."""
    z = 2.0 * mu / np.maximum(sigma * sigma, 1e-300)
    small = np.abs(z) * (up + down) < 1e-9
    az = np.where(small, 1.0, np.abs(z))
    # For z > 0: (1 - e^{-z down}) / (1 - e^{-z (up + down)}); z < 0 by symmetry. Stable forms.
    pos = -np.expm1(-az * down) / -np.expm1(-az * (up + down))
    neg = 1.0 - (-np.expm1(-az * up) / -np.expm1(-az * (up + down)))
    p = np.where(z > 0, pos, neg)
    return np.where(small, down / (up + down), p)


def _first_passage_time(rng, dist, speed, sigma) -> np.ndarray:
    """Delay to cover dist: inverse Gaussian (mean dist/speed, shape dist^2/sigma^2); Levy if no drift."""
    shape = (dist / np.maximum(sigma, 1e-300)) ** 2
    out = np.empty(dist.size)
    drift = speed > 1e-15
    if np.any(drift):
        out[drift] = rng.wald(dist[drift] / speed[drift], shape[drift])
    if np.any(~drift):
        g = rng.standard_normal(int((~drift).sum()))
        out[~drift] = shape[~drift] / np.maximum(g * g, 1e-300)
    return out


def simulate_events(frames, times_us, config: SensorConfig, rng: np.random.Generator,
                    log_input: bool = False) -> np.ndarray:
    """Events (EVENT_DTYPE, sorted by t in microseconds) for images at times_us.

    frames: T x H x W luminance (or T x H x W x 3 linear RGB) in [0, 1] full scale, or T x H x W
    sensor log intensity (lin-log of DN) with log_input=True. The first image sets the state.
    """
    frames = np.asarray(frames)
    times_us = np.asarray(times_us, dtype=np.float64)
    if frames.shape[0] != times_us.shape[0]:
        raise ValueError(f"{frames.shape[0]} frames but {times_us.shape[0]} times")
    if frames.shape[0] == 0:
        return empty_events()
    sensor = EventSensor(config, frames.shape[1], frames.shape[2], rng)
    sensor.reset(frames[0], times_us[0], log_input)
    chunks = [sensor.step(frames[k], times_us[k], log_input) for k in range(1, frames.shape[0])]
    chunks = [ch for ch in chunks if ch.size]
    return np.concatenate(chunks) if chunks else empty_events()
