"""A simulated lens: first-order lag toward the commanded focal power, plus reading noise."""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from efs_ros.lens.base import LensDriver, LensError


class SimLens(LensDriver):
    """Liquid lenses settle like a first-order system (a few ms), so the published focus lags the
    command; this driver reproduces that lag exactly for a piecewise-constant command.

    `clock` returns seconds (monotonic); tests inject their own to step time deterministically.
    """

    def __init__(self, time_constant_s: float = 0.005, noise_mdpt: float = 2.0,
                 initial_dpt: float = 0.0, temperature_c: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, seed: int | None = None):
        if not (time_constant_s >= 0.0 and math.isfinite(time_constant_s)):
            raise ValueError(f"time_constant_s must be finite and >= 0, got {time_constant_s}")
        if not (noise_mdpt >= 0.0 and math.isfinite(noise_mdpt)):
            raise ValueError(f"noise_mdpt must be finite and >= 0, got {noise_mdpt}")
        self.time_constant_s = float(time_constant_s)
        self.noise_dpt = float(noise_mdpt) * 1e-3
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._actual = float(initial_dpt)
        self._target = float(initial_dpt)
        self._last_t = clock()
        self._temperature_c = float(temperature_c)
        self._connected = False

    def connect(self) -> None:
        self._advance()
        self._connected = True

    def close(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def _require_connected(self) -> None:
        if not self._connected:
            raise LensError("simulated lens is not connected (call connect() first)")

    def _advance(self) -> None:
        """Move the lens state to the clock's present time (exact for a constant target)."""
        now = self._clock()
        dt = max(0.0, now - self._last_t)
        self._last_t = now
        if self.time_constant_s == 0.0:
            self._actual = self._target
        else:
            self._actual = self._target + (self._actual - self._target) * math.exp(-dt / self.time_constant_s)

    def set_focus(self, dpt: float) -> None:
        self._require_connected()
        if not math.isfinite(dpt):
            raise LensError(f"focal power must be finite, got {dpt}")
        self._advance()
        self._target = float(dpt)

    def read_focus(self) -> float:
        self._require_connected()
        self._advance()
        noise = self._rng.normal(0.0, self.noise_dpt) if self.noise_dpt > 0 else 0.0
        return self._actual + noise

    @property
    def true_focus_dpt(self) -> float:
        """The noise-free lens state (for tests and simulators)."""
        self._advance()
        return self._actual

    def temperature(self) -> float | None:
        self._require_connected()
        return self._temperature_c
