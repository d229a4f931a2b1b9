"""A separate DDS process for tests: echoes EventPacket and Image messages back unchanged."""
import sys
import time

import rclpy
from event_camera_msgs.msg import EventPacket
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image


def main() -> int:
    lifetime_s = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    rclpy.init()
    node = rclpy.create_node("efs_test_echo_peer")
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    events_out = node.create_publisher(EventPacket, "/efs_test/events_echo", qos)
    image_out = node.create_publisher(Image, "/efs_test/image_echo", qos)
    node.create_subscription(EventPacket, "/efs_test/events", events_out.publish, qos)
    node.create_subscription(Image, "/efs_test/image", image_out.publish, qos)
    print("echo peer ready", flush=True)
    deadline = time.monotonic() + lifetime_s
    while rclpy.ok() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
