"""The interface every focus-tunable lens driver implements, so nodes never care which one runs."""
from __future__ import annotations

from abc import ABC, abstractmethod


class LensError(RuntimeError):
    """A lens operation failed; the message is one line a user can act on."""


class LensDriver(ABC):
    """A focus-tunable lens addressed in diopters of focal power (vergence).

    Drivers are not thread-safe by contract: one thread (the focus controller's I/O thread) owns
    a driver. Every failure is a `LensError`; after a failure that lost the device,
    `is_connected` is False and `connect()` may be called again.
    """

    @abstractmethod
    def connect(self) -> None:
        """Open the device and put it into focal-power control; raises LensError."""

    @abstractmethod
    def close(self) -> None:
        """Release the device; safe to call at any time, never raises."""

    @abstractmethod
    def set_focus(self, dpt: float) -> None:
        """Command a focal power in diopters (returns without waiting for the lens to settle)."""

    @abstractmethod
    def read_focus(self) -> float:
        """The lens's present focal power in diopters: what the node publishes."""

    @abstractmethod
    def temperature(self) -> float | None:
        """Lens temperature in degrees Celsius, or None where the driver cannot tell."""

    @property
    @abstractmethod
    def is_connected(self) -> bool:
        """True between a successful connect() and close() or a lost device."""

    def reconnect(self) -> None:
        """Drop whatever connection there is and connect again."""
        self.close()
        self.connect()

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
