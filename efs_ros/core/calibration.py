"""The rig calibration file (CONTRACT section 4): how the frame camera, the lens and the
triggers of a real rig relate to the event sensor.

Every key is optional and defaults to the pixel-registered, linear, ideal-lens rig that the
simulator and CONTRACT sections 1-3 describe, so a missing file changes nothing. Unknown keys are
an error naming the key: a typo must not silently fall back to a default.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message is one line naming the problem."""


def check_transfer(name: str) -> str:
    """`linear`, `srgb` or `gamma:<g>` with g > 0 (CONTRACT section 4), else CalibrationError."""
    if name in ("linear", "srgb"):
        return name
    kind, _, value = str(name).partition(":")
    try:
        gamma = float(value) if kind == "gamma" else float("nan")
    except ValueError:
        gamma = float("nan")
    if not (math.isfinite(gamma) and gamma > 0):
        raise CalibrationError(f"frame_transfer {name!r}: expected linear, srgb or gamma:<g> with g > 0")
    return name


@dataclass(frozen=True)
class RigCalibration:
    frame_to_events: tuple[float, ...] = IDENTITY
    """3x3 homography, row-major: frame pixel (x, y, 1) -> event pixel (pixel centres on integers)."""
    frame_transfer: str = "linear"
    """linear | srgb | gamma:<g> (frame value = irradiance ** (1/g))."""
    vergence_from_lens: tuple[float, float] = (1.0, 0.0)
    """[a, b]: object vergence (1/m) = a * lens position + b."""
    lens_delay_s: float = 0.0
    """The optics follow the reported lens position this much later."""
    trigger_exposure_start_value: int = 1
    """EXT_TRIGGER value that marks exposure start (0 for inverted strobes)."""
    frame_stamp_offset_s: float | None = None
    """Frame stamp minus mid-exposure time; None: estimated from trigger pairs."""

    def __post_init__(self):
        h = tuple(float(v) for v in self.frame_to_events)
        if len(h) != 9 or not all(map(math.isfinite, h)):
            raise CalibrationError(f"frame_to_events must be 9 finite numbers (3x3 row-major), got {h}")
        if abs(float(np.linalg.det(np.reshape(h, (3, 3))))) < 1e-12:
            raise CalibrationError("frame_to_events is singular: it cannot map the frame onto the events")
        object.__setattr__(self, "frame_to_events", h)
        check_transfer(self.frame_transfer)
        ab = tuple(float(v) for v in self.vergence_from_lens)
        if len(ab) != 2 or not all(map(math.isfinite, ab)) or ab[0] == 0:
            raise CalibrationError(f"vergence_from_lens must be [a, b], finite, a != 0; got {ab}")
        object.__setattr__(self, "vergence_from_lens", ab)
        if not (math.isfinite(self.lens_delay_s) and abs(self.lens_delay_s) < 1.0):
            raise CalibrationError(f"lens_delay_s must be finite and under 1 s, got {self.lens_delay_s}")
        if self.trigger_exposure_start_value not in (0, 1):
            raise CalibrationError("trigger_exposure_start_value must be 0 or 1, got "
                                   f"{self.trigger_exposure_start_value!r}")
        if self.frame_stamp_offset_s is not None and not math.isfinite(self.frame_stamp_offset_s):
            raise CalibrationError("frame_stamp_offset_s must be finite or null, got "
                                   f"{self.frame_stamp_offset_s}")

    # --- the file ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict | None) -> RigCalibration:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CalibrationError(f"unknown calibration key {unknown[0]!r} "
                                   f"(known: {', '.join(sorted(known))})")
        try:
            return cls(**values)
        except TypeError as exc:
            raise CalibrationError(f"calibration values do not fit: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> RigCalibration:
        import yaml

        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise CalibrationError(f"cannot read calibration file {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise CalibrationError(f"calibration file {path} is not YAML: {detail}") from None
        if values is not None and not isinstance(values, dict):
            raise CalibrationError(f"calibration file {path} must be a mapping of keys to values")
        try:
            return cls.from_dict(values)
        except CalibrationError as exc:
            raise CalibrationError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["frame_to_events"] = [float(v) for v in self.frame_to_events]
        d["vergence_from_lens"] = [float(v) for v in self.vergence_from_lens]
        return d

    def save(self, path: str | Path, comment: str = "") -> None:
        import yaml

        head = "".join(f"# {line}\n" for line in comment.splitlines())
        Path(path).write_text(head + yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_(self, **changes) -> RigCalibration:
        return replace(self, **changes)

    # --- what it means ----------------------------------------------------------------------
    @property
    def homography(self) -> np.ndarray:
        return np.reshape(np.asarray(self.frame_to_events, dtype=np.float64), (3, 3))

    @property
    def registered(self) -> bool:
        """Whether frame and event pixels coincide (no warp needed)."""
        return np.allclose(self.homography / self.homography[2, 2], np.eye(3), atol=1e-9)

    def lens_to_focus(self, lens_t_s: np.ndarray, lens_position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(times, object vergences) of the optics from the reported lens samples: the optics
        reach a reported position lens_delay_s later, and vergence = a * position + b."""
        a, b = self.vergence_from_lens
        return (np.asarray(lens_t_s, np.float64) + self.lens_delay_s,
                a * np.asarray(lens_position, np.float64) + b)
