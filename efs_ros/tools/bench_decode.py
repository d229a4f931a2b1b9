"""EVT 3.0 decode speed: ours (stream over packets, one-shot; compiled numba kernel and numpy
reference) vs the `evt3` and `faery` packages, all on the same bytes in the same run, best of
several turns taken in rotation. Our kernel's JIT compile / cache load is done by a warm-up call
before timing (and reported on its own line), so it is excluded from the timings.

`scripts/ros-env .venv/bin/python -m efs_ros.tools.bench_decode [--quick]`
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from efs_ros.core.events import EVENT_DTYPE
from efs_ros.core.evt3 import Evt3Decoder, decode_evt3, encode_evt3, warm_up

REAL_BAG = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real" / "evt3_trigger"
PACKET_BYTES = 1 << 16
"""Synthetic stream packet size (a metavision_driver packet is typically a few to 64 KiB)."""


def busy_scene_events(n_events: int, seed: int = 0, width: int = 1280, height: int = 720,
                      duration_us: int = 2_000_000) -> np.ndarray:
    """A busy scene (moving edges): short same-row runs of nearby pixels firing together, sorted
    by (t, y, x) as a sensor reads them out, so the encoder uses vector words."""
    rng = np.random.default_rng(seed)
    n_runs = max(1, n_events // 8)
    t = np.sort(rng.integers(0, duration_us, n_runs))
    y = rng.integers(0, height, n_runs)
    p = rng.choice(np.array([-1, 1], np.int8), n_runs)
    length = rng.integers(1, 16, n_runs)
    x0 = rng.integers(0, width - 64, n_runs)
    run = np.repeat(np.arange(n_runs), length)
    start = np.cumsum(length) - length
    step = rng.integers(1, 4, run.size)
    step[start] = 0
    offset = np.cumsum(step)
    events = np.empty(run.size, EVENT_DTYPE)
    events["t"], events["y"], events["p"] = t[run], y[run], p[run]
    events["x"] = x0[run] + offset - offset[start][run]
    return events[np.lexsort((events["x"], events["y"], events["t"]))]


def real_packets() -> tuple[list[bytes], int, int] | None:
    if not (REAL_BAG / "metadata.yaml").exists():
        return None
    from rosbags.rosbag2 import Reader

    from efs_ros.io.typestore import typestore

    store = typestore()
    packets, width, height = [], 0, 0
    with Reader(REAL_BAG) as reader:
        for conn, _, raw in reader.messages():
            msg = store.deserialize_cdr(raw, conn.msgtype)
            packets.append(bytes(msg.events))
            width, height = int(msg.width), int(msg.height)
    return packets, width, height


def _best_round_robin(fns: list, repeats: int) -> list[tuple[float, object]]:
    """Best time and result of each callable, timed in turns (one call of each per round) so
    that a busy machine slows all of them alike rather than whichever ran in a bad moment."""
    best: list[float] = [float("inf")] * len(fns)
    results: list[object] = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return list(zip(best, results, strict=True))


def _decoders(packets: list[bytes], width: int, height: int, raw_path: Path, backends: list[str]):
    """(name, mode, callable returning the number of events) for every decoder available."""
    data = b"".join(packets)

    def ours_stream(backend):
        decoder = Evt3Decoder(width, height, backend=backend)
        return sum(len(decoder.decode(p).events) for p in packets)

    def ours_one_shot(backend):
        return len(decode_evt3(data, width, height, backend=backend).events)

    out = []
    for backend in backends:
        name = f"efs_ros {backend}"
        out += [(name, f"stream, {len(packets)} packets", lambda b=backend: ours_stream(b)),
                (name, "one-shot bytes", lambda b=backend: ours_one_shot(b))]
    try:
        import evt3
    except ImportError:
        evt3 = None
    if evt3 is not None:
        def evt3_stream():
            decoder = evt3.Decoder(sensor_width=width, sensor_height=height)
            return sum(len(decoder.feed(p)) for p in packets)

        out += [("evt3 (Rust)", f"stream, {len(packets)} packets", evt3_stream),
                ("evt3 (Rust)", "one-shot bytes",
                 lambda: len(evt3.decode_bytes(data, sensor_width=width, sensor_height=height)))]
    try:
        import faery
    except ImportError:
        faery = None
    if faery is not None:
        def faery_file():
            return sum(len(packet["events"])
                       for packet in faery.evt.Decoder(str(raw_path), (width, height), "evt3")
                       if "events" in packet)

        out.append(("faery (Rust)", ".raw file (incl. read)", faery_file))
    return out


def run(report=print, quick: bool = False, numpy_reference: bool = True) -> list[dict]:
    """Benchmark rows: dataset, decoder, mode, events, best seconds, M events/s."""
    repeats_small, repeats_large = (20, 2) if quick else (300, 10)  # small: ~5 ms a turn
    start = time.perf_counter()
    backend = warm_up()
    report(f"   our decoder's backend: {backend}; warm-up (JIT compile or cache load, excluded "
           f"from the timings): {time.perf_counter() - start:.2f} s")
    backends = [backend] + (["numpy"] if numpy_reference and backend != "numpy" else [])
    datasets = []
    real = real_packets()
    if real is None:
        report(f"   real recording not found at {REAL_BAG}: skipped")
    else:
        datasets.append(("real 1280x720 (105 packets)", *real, repeats_small))
    n_synthetic = 1_000_000 if quick else 6_000_000
    events = busy_scene_events(n_synthetic)
    data = encode_evt3(events)
    packets = [data[i:i + PACKET_BYTES] for i in range(0, len(data), PACKET_BYTES)]
    datasets.append((f"synthetic busy ({len(events) / 1e6:.1f} M ev, vectors)", packets, 1280, 720,
                     repeats_large))

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, pkts, width, height, repeats in datasets:
            raw_path = Path(tmp) / "bench.raw"
            raw_path.write_bytes(f"% evt 3.0\n% format EVT3;height={height};width={width}\n% end\n".encode()
                                 + b"".join(pkts))
            n_bytes = sum(len(p) for p in pkts)
            decoders = _decoders(pkts, width, height, raw_path, backends)
            fast = [d for d in decoders if d[0] != "efs_ros numpy"]  # the numpy reference is slow:
            slow = [d for d in decoders if d[0] == "efs_ros numpy"]  # fewer turns, on its own
            timed = (_best_round_robin([fn for _, _, fn in fast], repeats)
                     + _best_round_robin([fn for _, _, fn in slow], max(2, repeats // 5)))
            for (decoder, mode, _), (seconds, n_events) in zip(fast + slow, timed, strict=True):
                rows.append({"dataset": name, "decoder": decoder, "mode": mode, "events": int(n_events),
                             "bytes": n_bytes, "best_s": seconds, "m_events_per_s": n_events / seconds / 1e6})
    _print_table(rows, report)
    return rows


def _print_table(rows: list[dict], report) -> None:
    report(f"   {'dataset':42s} {'decoder':13s} {'mode':24s} {'events':>9s} {'best ms':>9s} {'M ev/s':>8s}")
    for r in rows:
        report(f"   {r['dataset']:42s} {r['decoder']:13s} {r['mode']:24s} {r['events']:9d} "
               f"{r['best_s'] * 1e3:9.2f} {r['m_events_per_s']:8.1f}")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        ours = [r for r in rows if r["dataset"] == dataset and r["decoder"].startswith("efs_ros")]
        for theirs in rows:
            if theirs["dataset"] != dataset or not theirs["decoder"].startswith("evt3"):
                continue
            for r in ours:
                if r["mode"] == theirs["mode"]:
                    ratio = r["m_events_per_s"] / theirs["m_events_per_s"]
                    report(f"   {dataset}: {r['decoder']} / evt3, {r['mode']}: {ratio:.2f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_decode", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller synthetic stream, fewer repeats")
    parser.add_argument("--no-numpy", action="store_true", help="skip our numpy reference backend")
    args = parser.parse_args(argv)
    run(quick=args.quick, numpy_reference=not args.no_numpy)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
