"""Waiting on progress, not on time: the verdict of a test must not depend on machine speed.

A test that waits for fixed work (N packets counted, K images out) fails when the work stops
moving, never because a budget ran out on a slower or busier machine: `wait_for_progress`
polls `done()` and fails only when `progress()` (any comparable snapshot of the counters that
move while the work goes on) has not changed for `stall_s` seconds.
"""
from __future__ import annotations

import time

STALL_S = 60.0
"""No counter moved for this long: the work has stopped (a 2-core CI machine under load moves
its counters every second or so; a minute of nothing is a hang, not slowness)."""


class StalledError(AssertionError):
    """Progress stopped before the work was done."""


def wait_for_progress(progress, done, what: str, stall_s: float = STALL_S, step: float = 0.1,
                      alive=None) -> None:
    """Until done(); raise StalledError naming `what` (and the last snapshot) when progress() stays
    the same for stall_s, or when alive() (e.g. a child process still running) turns False."""
    last = progress()
    moved_at = time.monotonic()
    while not done():
        if alive is not None and not alive():
            raise StalledError(f"{what}: the process under test exited (last progress {last!r})")
        now = progress()
        if now != last:
            last, moved_at = now, time.monotonic()
        elif time.monotonic() - moved_at > stall_s:
            raise StalledError(f"{what}: no progress for {stall_s:.0f} s (stuck at {last!r})")
        time.sleep(step)


def wait_for_condition(done, what: str, alive=None, stall_s: float = STALL_S) -> None:
    """Until done(), for things one event away (discovery, matching, a reply): nothing counts
    while they come, so the whole stall window is theirs."""
    wait_for_progress(lambda: None, done, what, stall_s=stall_s, alive=alive)
