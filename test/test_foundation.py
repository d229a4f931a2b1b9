"""The foundation: messages over real DDS between processes, serialization, bags, DDS scope."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import rclpy
from event_camera_msgs.msg import EventPacket
from progress import STALL_S, wait_for_progress
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image

from efs_ros.io.typestore import EVENT_PACKET_TYPE, typestore

REPO = Path(__file__).resolve().parents[1]


def make_packet(seq: int, rng: np.random.Generator) -> EventPacket:
    msg = EventPacket()
    msg.header.stamp.sec = 1_700_000_000 + seq
    msg.header.stamp.nanosec = 123_456 * seq
    msg.header.frame_id = "event_camera_optical_frame"
    msg.height, msg.width, msg.seq, msg.time_base = 720, 1280, seq, 0
    msg.encoding, msg.is_bigendian = "evt3", False
    msg.events = rng.integers(0, 256, size=int(rng.integers(0, 40_000)), dtype=np.uint8).tobytes()
    return msg


def make_image(seq: int, rng: np.random.Generator) -> Image:
    msg = Image()
    msg.header.stamp.sec = 1_700_000_000 + seq
    msg.header.frame_id = "camera_optical_frame"
    msg.height, msg.width, msg.encoding, msg.is_bigendian = 48, 64, "rgb8", 0
    msg.step = 64 * 3
    msg.data = rng.integers(0, 256, size=48 * 64 * 3, dtype=np.uint8).tobytes()
    return msg


PEER_LIFETIME_S = 600
"""Only a safety net against an orphaned peer (the fixture ends it): the pytest timeout."""

PROBE_SEQ = 1 << 40
"""Seq (events) and stamp second 0 (images) of the probes that find the path both ways."""


@pytest.fixture
def echo_peer():
    proc = subprocess.Popen([sys.executable, str(REPO / "test" / "peers" / "echo_peer.py"),
                             str(PEER_LIFETIME_S)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().strip() == "echo peer ready"
    yield proc
    proc.terminate()
    proc.wait(timeout=STALL_S)  # cleanup only: terminate() ends it at once


def _local_udp_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the UDP sockets a process holds, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[9] in inodes:
            hex_ip, hex_port = cols[1].split(":")
            ip = ".".join(str(int(hex_ip[i:i + 2], 16)) for i in (6, 4, 2, 0))
            found.append((ip, int(hex_port, 16)))
    return found


def test_event_packets_and_images_cross_processes_byte_for_byte(echo_peer):
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("efs_test_foundation", context=context)
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    got_events, got_images = {}, {}
    node.create_subscription(EventPacket, "/efs_test/events_echo",
                             lambda m: got_events.setdefault(m.seq, m), qos)
    node.create_subscription(Image, "/efs_test/image_echo",
                             lambda m: got_images.setdefault(m.header.stamp.sec, m), qos)
    pub_events = node.create_publisher(EventPacket, "/efs_test/events", qos)
    pub_images = node.create_publisher(Image, "/efs_test/image", qos)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    rng = np.random.default_rng(7)
    sent_events = [make_packet(i, rng) for i in range(20)]
    sent_images = [make_image(i, rng) for i in range(5)]
    probe_event, probe_image = make_packet(0, rng), make_image(0, rng)
    probe_event.seq, probe_image.header.stamp.sec = PROBE_SEQ, 0

    def probed() -> bool:
        """Both paths carry messages both ways (the peer's writers matched our readers too):
        a probe is echoed. Re-sent until it is (one sent before the matching is lost)."""
        if PROBE_SEQ in got_events and 0 in got_images:
            return True
        pub_events.publish(probe_event)
        pub_images.publish(probe_image)
        return False

    def echoed() -> tuple[int, int]:
        return (sum(m.seq in got_events for m in sent_events),
                sum(m.header.stamp.sec in got_images for m in sent_images))
    try:
        spinner.start()
        # discovery: nothing counts while the peer appears, STALL_S for it to show
        wait_for_progress(lambda: None, probed, "the echo peer over DDS", stall_s=STALL_S,
                          step=0.5, alive=lambda: echo_peer.poll() is None)
        for msg in sent_events:
            pub_events.publish(msg)
        for msg in sent_images:
            pub_images.publish(msg)
        wait_for_progress(echoed, lambda: echoed() == (len(sent_events), len(sent_images)),
                          "the echoes", alive=lambda: echo_peer.poll() is None)
        for msg in sent_events:
            echo = got_events[msg.seq]
            # CDR alignment padding is not guaranteed to be zeroed: compare fields, not wire bytes.
            assert echo == msg
            assert bytes(echo.events) == bytes(msg.events)
        for msg in sent_images:
            echo = got_images[msg.header.stamp.sec]
            assert echo == msg and bytes(echo.data) == bytes(msg.data)
        # DDS stays on this host: every socket of the peer on this domain's ports is loopback.
        domain = int(os.environ["ROS_DOMAIN_ID"])
        base = 7400 + 250 * domain
        dds_sockets = [(ip, port) for ip, port in _local_udp_sockets(echo_peer.pid)
                       if base <= port < base + 250]
        assert dds_sockets, "found none of the peer's DDS sockets"
        assert all(ip == "127.0.0.1" for ip, _ in dds_sockets), dds_sockets
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_event_packet_cdr_identical_between_rclpy_and_rosbags():
    store = typestore()
    rng = np.random.default_rng(3)
    for seq in range(5):
        msg = make_packet(seq, rng)
        raw = bytes(serialize_message(msg))
        decoded = store.deserialize_cdr(raw, EVENT_PACKET_TYPE)
        assert decoded.seq == seq and decoded.encoding == "evt3" and decoded.width == 1280
        assert decoded.events.tobytes() == bytes(msg.events)
        assert deserialize_message(raw, EventPacket) == msg
        assert deserialize_message(bytes(store.serialize_cdr(decoded, EVENT_PACKET_TYPE)), EventPacket) == msg


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_event_packet_round_trip_through_a_bag(tmp_path, storage):
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    store = typestore()
    rng = np.random.default_rng(11)
    sent = [bytes(serialize_message(make_packet(i, rng))) for i in range(10)]
    bag = tmp_path / "bag"
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(bag, version=9, storage_plugin=plugin) as writer:
        conn = writer.add_connection("/event_camera/events", EVENT_PACKET_TYPE, typestore=store)
        for i, raw in enumerate(sent):
            writer.write(conn, 1_000 + i, raw)
    with Reader(bag) as reader:
        read = [(c.topic, bytes(raw)) for c, _, raw in reader.messages()]
    assert [r for _, r in read] == sent
    assert {topic for topic, _ in read} == {"/event_camera/events"}


def test_ruff_clean():
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "efs_ros", "test", "launch"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
