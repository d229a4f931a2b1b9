"""`make bench`: every speed benchmark of the project in one run, each beside its baseline.

Sections run in order and each prints its own table; a section whose dependency is missing
says why instead of disappearing.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

SECTIONS = (
    ("EVT3 decode (M events/s)", "efs_ros.tools.bench_decode"),
    ("Per-job latency by backend", "efs_ros.tools.bench_infer"),
    ("Selection: ours vs paper-literal search", "efs_ros.tools.bench_search"),
    ("Live node throughput", "efs_ros.tools.bench_node"),
    ("Lens state rate", "efs_ros.tools.bench_lens"),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="efs_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[],
                        help="run only sections whose module name contains this")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats")
    parser.add_argument("--json", help="also write all rows to this file")
    args = parser.parse_args(argv)
    results, failed = {}, []
    for title, module_name in SECTIONS:
        if args.only and not any(key in module_name for key in args.only):
            continue
        print(f"\n== {title} ({module_name})", flush=True)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            print(f"   skipped: {exc}")
            continue
        start = time.perf_counter()
        try:
            results[module_name] = module.run(quick=args.quick)
        except Exception as exc:  # noqa: BLE001 - one section failing must not hide the others
            print(f"   FAILED: {type(exc).__name__}: {exc}")
            failed.append(module_name)
        print(f"   ({time.perf_counter() - start:.1f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
