"""Rig families: sets of ranges that simulated rigs are drawn from, seeded per scene.

Each family spans a regime (sensor size, worst blur, lens, focus range, frame position, event
sensor, frame noise, textures, scene geometry) and every scene draws its numbers at random
inside the ranges from (family seed, index) alone, so a benchmark over them cannot be tuned to
one regime. The last family, "held-out", spans every range at once with the validation
textures and its own seed: it is for reporting, never for developing or training a method.
`make bench-quality` (tools/bench_quality) scores the methods over them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .optics import ThinLens
from .rig import RigConfig
from .sensor import SensorConfig

Range = tuple[float, float]


@dataclass(frozen=True)
class RigFamily:
    """Ranges a scene's rig is drawn from (uniform unless noted)."""

    name: str
    about: str
    seed: int
    sizes: tuple[tuple[int, int], ...] = ((128, 96), (160, 120), (240, 180), (346, 260), (320, 240))
    """(width, height) choices."""
    blur_radius_px: Range = (4.0, 25.0)
    """Worst blur radius of the focus range, in pixels of this sensor."""
    f_number: Range = (1.2, 4.0)
    focal_length_mm: Range = (8.0, 100.0)
    far_dpt: Range = (0.0, 2.0)
    span_dpt: Range = (1.5, 6.0)
    """near_dpt - far_dpt."""
    frame_fraction: Range = (0.0, 1.0)
    sensors: tuple[str, ...] = ("clean", "noisy", "voltmeter")
    threshold: Range = (0.1, 0.4)
    off_ratio: Range = (0.7, 1.4)
    """OFF threshold / ON threshold (clipped into `threshold`)."""
    mismatch: Range = (0.0, 0.08)
    read_noise: Range = (0.0, 0.02)
    full_well: Range = (0.0, 0.0)
    """Log-uniform photo-electrons at full scale (frame shot noise); (0, 0): none."""
    textures: tuple[str, ...] = ("train",)
    contrast: Range = (0.6, 1.0)
    """Log-uniform texture contrast."""
    scene_kinds: tuple[str, ...] = ("layers", "slanted", "mixed", "continuous")
    held_out: bool = False


FAMILIES: tuple[RigFamily, ...] = (
    RigFamily("small-clean", "128x96-240x180, clean v2e sensor, studio-clean frames, blur 4-12 px",
              seed=11, sizes=((128, 96), (160, 120), (192, 144), (240, 180)), blur_radius_px=(4.0, 12.0),
              sensors=("clean",), read_noise=(0.0, 0.003), textures=("train",)),
    RigFamily("dvs346-noisy",
              "346x260, noisy v2e sensor (leak, shot noise, slow photoreceptor), noisy frames",
              seed=12, sizes=((346, 260),), blur_radius_px=(6.0, 16.0), sensors=("noisy",),
              read_noise=(0.005, 0.02), full_well=(500.0, 5000.0)),
    RigFamily("vga-voltmeter", "480x360-640x480, DVS-Voltmeter sensor, blur 8-25 px",
              seed=13, sizes=((480, 360), (640, 480)), blur_radius_px=(8.0, 25.0), sensors=("voltmeter",),
              read_noise=(0.0, 0.01)),
    RigFamily("low-contrast", "texture contrast 3-20 % of the usual, any sensor",
              seed=14, contrast=(0.03, 0.2)),
    RigFamily("sparse-dots", "sparse dots on plain grounds, any sensor",
              seed=15, textures=("sparse",), contrast=(0.2, 1.0)),
    RigFamily("deep-continuous", "continuous and slanted depth, blur 12-25 px, wide focus ranges",
              seed=16, blur_radius_px=(12.0, 25.0), span_dpt=(3.0, 8.0),
              scene_kinds=("continuous", "slanted")),
    RigFamily("held-out", "every range at once, validation textures, own seeds (never tuned on)",
              seed=99, sizes=((128, 96), (160, 120), (240, 180), (304, 240), (346, 260), (480, 360),
                              (640, 480)),
              textures=("val", "sparse", "all"), contrast=(0.03, 1.0), full_well=(300.0, 30000.0),
              read_noise=(0.0, 0.03), held_out=True),
)
FAMILY_NAMES = tuple(f.name for f in FAMILIES)


@dataclass
class Draw:
    """One scene of a family: the rig, the sensor, and the numbers drawn for them."""

    family: str
    index: int
    rig: RigConfig
    sensor: SensorConfig
    params: dict = field(default_factory=dict)


def _uniform(rng, r: Range) -> float:
    return float(rng.uniform(*r)) if r[1] > r[0] else float(r[0])


def _log_uniform(rng, r: Range) -> float:
    if r[1] <= 0:
        return 0.0
    return float(math.exp(rng.uniform(math.log(r[0]), math.log(r[1]))))


def _sensor(kind: str, rng, family: RigFamily):
    if kind == "voltmeter":
        return SensorConfig.randomized(rng, models=("voltmeter",))
    lo, hi = family.threshold
    on = _uniform(rng, family.threshold)
    off = float(np.clip(on * _uniform(rng, family.off_ratio), lo, hi))
    common = dict(threshold_pos=on, threshold_neg=off, sigma_threshold=_uniform(rng, family.mismatch))
    if kind == "clean":
        return SensorConfig(cutoff_hz=_log_uniform(rng, (200.0, 1000.0)),
                            leak_hz=_log_uniform(rng, (0.001, 0.02)), shot_hz=_log_uniform(rng, (1e-4, 0.01)),
                            refractory_us=_uniform(rng, (0.0, 500.0)), **common)
    if kind == "noisy":
        return SensorConfig(cutoff_hz=_log_uniform(rng, (20.0, 100.0)),
                            leak_hz=_log_uniform(rng, (0.05, 0.5)), shot_hz=_log_uniform(rng, (1.0, 10.0)),
                            refractory_us=_uniform(rng, (0.0, 1000.0)), **common)
    raise ValueError(f"unknown sensor kind {kind!r}")


def draw(family: RigFamily, index: int) -> Draw:
    """Scene `index` of a family: every number from the family's seed and the index."""
    rng = np.random.default_rng([family.seed, index])
    width, height = family.sizes[int(rng.integers(len(family.sizes)))]
    radius = _uniform(rng, family.blur_radius_px)
    far = _uniform(rng, family.far_dpt)
    near = far + _uniform(rng, family.span_dpt)
    focal = _uniform(rng, family.focal_length_mm) * 1e-3
    near = min(near, 0.8 / focal)  # focus stays well outside the focal length
    lens = ThinLens.for_worst_blur(radius, near, far, focal, _uniform(rng, family.f_number))
    frame_at = _uniform(rng, family.frame_fraction)
    sensor_kind = family.sensors[int(rng.integers(len(family.sensors)))]
    sensor = _sensor(sensor_kind, rng, family)
    full_well = _log_uniform(rng, family.full_well)
    textures = family.textures[int(rng.integers(len(family.textures)))]
    kind = family.scene_kinds[int(rng.integers(len(family.scene_kinds)))]
    # the scene fills most of the focus range, never beyond it
    margin = 0.05 * (near - far)
    scene_near_m, scene_far_m = 1.0 / (near - margin), 1.0 / max(far + margin, 1e-3)
    rig = RigConfig(height=height, width=width, lens=lens, near_dpt=near, far_dpt=far,
                    frame_fraction=(frame_at, frame_at), scene_kind=kind, scene_near_m=scene_near_m,
                    scene_far_m=scene_far_m, textures=textures, contrast=_log_uniform(rng, family.contrast),
                    read_noise=_uniform(rng, family.read_noise), full_well=full_well)
    params = {"size": f"{width}x{height}", "blur_radius_px": radius, "far_dpt": far, "near_dpt": near,
              "focal_length_mm": focal * 1e3, "f_number": lens.f_number, "frame_fraction": frame_at,
              "sensor": sensor_kind, "threshold_on": sensor.threshold_pos,
              "threshold_off": sensor.threshold_neg,
              "mismatch": sensor.sigma_threshold, "read_noise": rig.read_noise, "full_well": full_well,
              "textures": textures, "contrast": rig.contrast, "scene": kind}
    return Draw(family.name, index, rig, sensor, params)
