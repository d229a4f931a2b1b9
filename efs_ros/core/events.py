"""The one event representation used everywhere in efs_ros.

Events are structured numpy arrays so that every per-event path stays vectorised. Time is
int64 microseconds; its origin depends on the stage (sensor clock after decoding, the job's
frame stamp inside a job), and each function says which it expects.
"""
from __future__ import annotations

import numpy as np

EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "i1")])
"""Change-detection events: t in microseconds, polarity p in {-1, +1}."""

TRIGGER_DTYPE = np.dtype([("t", "<i8"), ("channel", "u1"), ("value", "u1")])
"""External-trigger edges: t in microseconds, value 1 = rising, 0 = falling."""


def empty_events(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=EVENT_DTYPE)


def empty_triggers(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=TRIGGER_DTYPE)


def make_events(t, x, y, p) -> np.ndarray:
    """Build an event array from columns (any array-likes of equal length)."""
    t = np.asarray(t)
    out = np.empty(t.shape[0], dtype=EVENT_DTYPE)
    out["t"] = t
    out["x"] = x
    out["y"] = y
    out["p"] = p
    return out


def concatenate(chunks) -> np.ndarray:
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        return empty_events()
    return np.concatenate(chunks)
