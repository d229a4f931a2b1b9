"""Publish a recorded focal-sweep bag (CONTRACT section 1) live, optionally with /clock.

    efs_replay BAG [--rate R] [--loop | --passes N] [--clock] [--wait-subscribers N]

Messages go out in recorded order as the bag's raw CDR bytes (no deserialisation, so an
EventPacket costs one memcpy whatever its size), paced by the bag's receive times divided by
the rate. With --clock, /clock carries the bag time so that nodes running with
use_sim_time=true see the recorded clock; with --loop the clock jumps back at each restart,
which the all-in-focus node detects and reports as a clock reset.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from efs_ros.rosenv import ensure_ros_environment

CONTRACT_TOPICS = ("/event_camera/events", "/camera/image_raw", "/lens/focus_state",
                   "/ground_truth/all_in_focus", "/ground_truth/depth")
EVENTS_TOPIC = "/event_camera/events"


class ReplayError(RuntimeError):
    """A bag that cannot be replayed; the message is one line for the user."""


@dataclass
class ReplayStats:
    messages: int = 0
    loops: int = 0
    bag_seconds: float = 0.0
    wall_seconds: float = 0.0
    late_max_s: float = 0.0
    """The worst lag behind the schedule (a rate too high for this machine shows here)."""


def message_class(msgtype: str):
    """'pkg/msg/Name' -> the generated rclpy class."""
    try:
        package, kind, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ValueError, ImportError, AttributeError) as exc:
        raise ReplayError(f"message type {msgtype!r} is not available to rclpy ({exc})") from exc


def open_bag(path: Path):
    from rosbags.highlevel import AnyReader

    from efs_ros.io.typestore import typestore

    path = Path(path)
    if not path.exists():
        raise ReplayError(f"no such bag: {path}")
    try:
        reader = AnyReader([path], default_typestore=typestore())
        reader.open()
    except Exception as exc:  # noqa: BLE001 - any reader failure is one line for the user
        raise ReplayError(f"cannot open bag {path}: {exc}") from exc
    return reader


def publisher_qos(topic: str):
    """Reliable, keep-last: matches both the drivers' best-effort subscribers and recorders.

    The events topic gets a deep history (metavision_driver publishes bursts of packets).
    """
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    depth = 1000 if topic == EVENTS_TOPIC else 100
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE)


class Replayer:
    """Replays one bag through an rclpy node; `run()` blocks until done (or `stop()`)."""

    def __init__(self, node, bag: Path, rate: float = 1.0, loop: bool = False,
                 clock: bool = False, clock_hz: float = 200.0, topics=None,
                 passes: int | None = None):
        if rate < 0:
            raise ReplayError(f"rate must be >= 0 (0 = as fast as possible), not {rate}")
        if passes is not None and passes < 1:
            raise ReplayError(f"passes must be >= 1, not {passes}")
        self.node = node
        self.rate = rate
        self.passes = passes if passes is not None else (None if loop else 1)
        self.clock_period_ns = int(1e9 / clock_hz) if clock and clock_hz > 0 else None
        self.reader = open_bag(bag)
        wanted = set(topics) if topics else None
        self.connections = [c for c in self.reader.connections
                            if wanted is None or c.topic in wanted]
        if not self.connections:
            raise ReplayError(f"bag {bag} has none of the topics {sorted(wanted or [])}")
        self.publishers = {}
        for conn in self.connections:
            if conn.topic not in self.publishers:
                cls = message_class(conn.msgtype)
                self.publishers[conn.topic] = node.create_publisher(
                    cls, conn.topic, publisher_qos(conn.topic))
        self.clock_publisher = None
        if self.clock_period_ns is not None:
            from rclpy.qos import QoSProfile
            from rosgraph_msgs.msg import Clock

            self.clock_publisher = node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
        self.stats = ReplayStats()
        self._stop = False

    def stop(self) -> None:
        self._stop = True

    def close(self) -> None:
        self.reader.close()

    def wait_for_subscribers(self, count: int, timeout_s: float, topics=None) -> bool:
        """Block until every chosen publisher is matched by `count` subscriptions."""
        topics = [t for t in (topics or self.publishers) if t in self.publishers]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stop:
            if all(self.publishers[t].get_subscription_count() >= count for t in topics):
                return True
            time.sleep(0.05)
        return False

    def _publish_clock(self, bag_ns: int) -> None:
        from rosgraph_msgs.msg import Clock

        from efs_ros.nodes.convert import ns_to_stamp

        self.clock_publisher.publish(Clock(clock=ns_to_stamp(bag_ns)))

    def run(self) -> ReplayStats:
        wall_start = time.monotonic()
        while not self._stop:
            self._play_once()
            self.stats.loops += 1
            if self.passes is not None and self.stats.loops >= self.passes:
                break
        self.stats.wall_seconds = time.monotonic() - wall_start
        return self.stats

    def _play_once(self) -> None:
        start_ns = self.reader.start_time
        wall_start = time.monotonic()
        last_clock_ns = None
        for conn, bag_ns, raw in self.reader.messages(connections=self.connections):
            if self._stop:
                return
            if self.rate > 0:
                due = wall_start + (bag_ns - start_ns) * 1e-9 / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    self.stats.late_max_s = max(self.stats.late_max_s, -delay)
            if self.clock_publisher is not None and (
                    last_clock_ns is None or bag_ns - last_clock_ns >= self.clock_period_ns
                    or bag_ns < last_clock_ns):
                self._publish_clock(bag_ns)
                last_clock_ns = bag_ns
            self.publishers[conn.topic].publish(bytes(raw))
            self.stats.messages += 1
            self.stats.bag_seconds = (bag_ns - start_ns) * 1e-9


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="efs_replay", description=__doc__.splitlines()[0])
    parser.add_argument("bag", type=Path, help="bag folder or file (mcap or sqlite3)")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="playback speed factor (0 = as fast as possible)")
    parser.add_argument("--loop", action="store_true", help="start over at the end, forever")
    parser.add_argument("--passes", type=int, default=None, metavar="N",
                        help="play the bag N times (the clock jumps back between passes)")
    parser.add_argument("--clock", action="store_true",
                        help="publish /clock from the bag's time (for use_sim_time)")
    parser.add_argument("--clock-hz", type=float, default=200.0,
                        help="most /clock messages per second of bag time")
    parser.add_argument("--topics", nargs="+", default=None,
                        help="replay only these topics (default: every topic in the bag)")
    parser.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                        help="before starting, wait until each input topic (events, frames, "
                             "lens) has N subscribers")
    parser.add_argument("--wait-timeout", type=float, default=30.0,
                        help="seconds to wait for --wait-subscribers before giving up")
    parser.add_argument("--linger", type=float, default=1.0,
                        help="seconds to stay up after the last message so it is delivered")
    return parser


def main(argv=None) -> int:
    ensure_ros_environment()
    args = build_parser().parse_args(argv)
    import rclpy

    rclpy.init()
    node = rclpy.create_node("efs_replay")
    replayer = None
    try:
        replayer = Replayer(node, args.bag, rate=args.rate, loop=args.loop, clock=args.clock,
                            clock_hz=args.clock_hz, topics=args.topics, passes=args.passes)
        if args.wait_subscribers > 0:
            inputs = [t for t in CONTRACT_TOPICS[:3] if t in replayer.publishers]
            if not replayer.wait_for_subscribers(args.wait_subscribers, args.wait_timeout, inputs):
                raise ReplayError(f"no {args.wait_subscribers} subscribers on {inputs} after "
                                  f"{args.wait_timeout:g} s")
        stats = replayer.run()
        time.sleep(max(0.0, args.linger))
        print(f"efs_replay: {stats.messages} messages, {stats.loops} pass(es), "
              f"{stats.bag_seconds:.2f} s of bag in {stats.wall_seconds:.2f} s, "
              f"worst lag {stats.late_max_s * 1e3:.1f} ms", flush=True)
        return 0
    except ReplayError as exc:
        print(f"efs_replay: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if replayer is not None:
            replayer.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
