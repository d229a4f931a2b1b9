"""ROS 2 node `focus_controller`: drives the focus-tunable lens in a triangle sweep and publishes
its measured state on /lens/focus_state (sensor_msgs/JointState) at >= 200 Hz.

Lens I/O and publishing of the focus stream run on a dedicated thread, paced by an absolute
schedule: a serial round trip must never block the executor, and the focus stream must not gap
when an executor shared with heavy nodes (in-process bringup) is busy. Services, parameters and
diagnostics run on the executor.

    python -m efs_ros.nodes.focus_controller --ros-args -p driver:=optotune -p port:=/tmp/efs_lens0
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from efs_ros.core.waveform import TriangleSweep, WaveformError
from efs_ros.lens.base import LensDriver, LensError
from efs_ros.lens.optotune import OptotuneLens
from efs_ros.lens.sim import SimLens
from efs_ros.nodes.common import (
    DIAG_ERROR,
    DIAG_OK,
    DIAG_WARN,
    check_parameter_change,
    declare_settings,
    diagnostic_array,
    diagnostic_status,
    float_param,
    qos,
    read_settings,
    spin_node_main,
    text_param,
)

DRIVERS = ("sim", "optotune")
FOCUS_TOPIC = "/lens/focus_state"
DIAGNOSTICS_TOPIC = "/diagnostics"
VELOCITY_WINDOW_S = 0.02
"""velocity[0] is the least-squares slope of the readings of the last 20 ms (>= 2 readings)."""
MAX_CATCH_UP_S = 0.05
"""A loop delayed by a busy host catches up on missed readings for up to this long, so the
average rate holds; further behind it restarts its schedule rather than burst."""
MAX_TRANSIENT_ERRORS = 3
"""Consecutive failed cycles (no reply, bad CRC) after which the lens counts as lost."""
TEMPERATURE_PERIOD_S = 1.0
MIN_SAMPLES_PER_SWEEP = 10


FIRMWARE_OFFSET_DPT = {"auto": None, "A": 5.0, "other": 0.0}
"""Focal-power encoding offset per firmware_type parameter (None: from the firmware's answer)."""
FIRMWARE_TYPES = tuple(FIRMWARE_OFFSET_DPT)


@dataclass(frozen=True)
class ControllerSettings:
    """Every parameter of the node; one immutable snapshot is swapped in per accepted change."""
    driver: str = "sim"
    port: str = "/dev/ttyACM0"
    near_dpt: float = 5.0
    far_dpt: float = 0.5
    sweep_duration_s: float = 0.5
    dwell_s: float = 0.0
    publish_rate_hz: float = 250.0
    autostart: bool = True
    firmware_type: str = "auto"
    reconnect_period_s: float = 1.0
    serial_timeout_s: float = 0.05
    sim_time_constant_s: float = 0.005
    sim_noise_mdpt: float = 2.0
    diagnostics_period_s: float = 1.0

    def waveform(self) -> TriangleSweep:
        return TriangleSweep(self.near_dpt, self.far_dpt, self.sweep_duration_s, self.dwell_s)

    def driver_key(self) -> tuple:
        """The settings that need a new driver object when they change."""
        if self.driver == "sim":
            return ("sim", self.sim_time_constant_s, self.sim_noise_mdpt)
        return ("optotune", self.port, self.firmware_type, self.serial_timeout_s)


def validate_settings(s: ControllerSettings) -> str | None:
    """Why these settings cannot run, or None. Ranges are also enforced by the descriptors."""
    if s.driver not in DRIVERS:
        return f"driver must be one of {DRIVERS}, got {s.driver!r}"
    if s.firmware_type not in FIRMWARE_TYPES:
        return f"firmware_type must be one of {FIRMWARE_TYPES}, got {s.firmware_type!r}"
    if s.driver == "optotune" and not s.port:
        return "driver 'optotune' needs a serial port (parameter 'port')"
    if not s.near_dpt > s.far_dpt:
        return (f"near_dpt ({s.near_dpt:g}) must be greater than far_dpt ({s.far_dpt:g}): "
                "vergence is 1/distance, so the near end has more diopters")
    if s.sweep_duration_s * s.publish_rate_hz < MIN_SAMPLES_PER_SWEEP:
        return (f"sweep_duration_s x publish_rate_hz = {s.sweep_duration_s * s.publish_rate_hz:.1f} "
                f"focus samples per sweep; need >= {MIN_SAMPLES_PER_SWEEP}")
    try:
        s.waveform()
    except WaveformError as exc:
        return str(exc)
    return None


_DESCRIPTORS = {
    "driver": text_param("lens driver", DRIVERS),
    "port": text_param("serial port of the Optotune Lens Driver 4 (driver 'optotune')"),
    "near_dpt": float_param("near end of the sweep, diopters (1/m)", 0.0, 50.0),
    "far_dpt": float_param("far end of the sweep, diopters (1/m); must be < near_dpt", 0.0, 50.0),
    "sweep_duration_s": float_param("duration of one sweep (near -> far), seconds", 0.005, 60.0),
    "dwell_s": float_param("pause at each end of the range, seconds", 0.0, 60.0),
    "publish_rate_hz": float_param("rate of lens I/O and /lens/focus_state, Hz", 200.0, 2000.0),
    "autostart": text_param("start sweeping when the node starts"),
    "firmware_type": text_param("lens driver firmware: auto = ask it (command H); A encodes "
                                "raw = (dpt + 5) x 200, other types raw = dpt x 200", FIRMWARE_TYPES),
    "reconnect_period_s": float_param("seconds between reconnection attempts to a lost lens", 0.05, 60.0),
    "serial_timeout_s": float_param("reply timeout per serial command, seconds", 0.001, 5.0),
    "sim_time_constant_s": float_param("simulated lens: first-order time constant, seconds", 0.0, 1.0),
    "sim_noise_mdpt": float_param("simulated lens: reading noise (std), millidiopters", 0.0, 100.0),
    "diagnostics_period_s": float_param("period of /diagnostics, seconds", 0.1, 10.0),
}


def _make_driver(s: ControllerSettings) -> LensDriver:
    if s.driver == "sim":
        return SimLens(time_constant_s=s.sim_time_constant_s, noise_mdpt=s.sim_noise_mdpt,
                       initial_dpt=s.near_dpt)
    return OptotuneLens(s.port, timeout=s.serial_timeout_s,
                        firmware_offset_dpt=FIRMWARE_OFFSET_DPT[s.firmware_type])


def slope(times_s: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope; 0 with fewer than two distinct times."""
    if len(times_s) < 2:
        return 0.0
    dt = times_s - times_s.mean()
    denom = float(np.dot(dt, dt))
    return float(np.dot(dt, values - values.mean()) / denom) if denom > 0 else 0.0


@dataclass
class _IoState:
    """What the lens I/O thread carries from one cycle to the next."""
    driver: LensDriver | None = None
    driver_key: tuple | None = None
    was_connected: bool = False
    next_attempt: float = 0.0
    next_temperature: float = 0.0
    next_tick: float = 0.0
    failures: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=64))


class FocusControllerNode(Node):
    """The lens sweep controller; constructible in any executor/context (`main()` is thin)."""

    def __init__(self, node_name: str = "focus_controller", **kwargs):
        super().__init__(node_name, **kwargs)
        settings = declare_settings(self, ControllerSettings, _DESCRIPTORS, validate_settings)

        self._lock = threading.Lock()
        self._settings = settings
        self._waveform = settings.waveform()
        self._running = False
        self._origin = time.monotonic()
        self._hold_dpt = settings.near_dpt
        self._commanded_dpt = settings.near_dpt
        self._measured_dpt: float | None = None
        self._temperature_c: float | None = None
        self._connected = False
        self._last_error = ""
        self._errors = 0
        self._reconnects = 0
        self._published = 0
        self._rate_mark = (time.monotonic(), 0)
        self._measured_rate_hz = 0.0

        self._focus_pub = self.create_publisher(JointState, FOCUS_TOPIC, qos(depth=100))
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, qos(depth=10))
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(Trigger, "~/stop", self._on_stop)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self._diag_timer = self.create_timer(settings.diagnostics_period_s, self._publish_diagnostics)
        if settings.autostart:
            self.start_sweep()

        where = f" on {settings.port}" if settings.driver == "optotune" else ""
        self.get_logger().info(
            f"lens driver '{settings.driver}'{where}, sweep {settings.near_dpt:g} -> "
            f"{settings.far_dpt:g} dpt in {settings.sweep_duration_s:g} s, "
            f"{FOCUS_TOPIC} at {settings.publish_rate_hz:g} Hz, "
            f"{'sweeping' if settings.autostart else 'idle'}")
        self._stop_io = threading.Event()
        self._io_thread = threading.Thread(target=self._io_loop, name="focus_controller_io", daemon=True)
        self._io_thread.start()

    # --- parameters -----------------------------------------------------------------------------
    def _read_settings(self, changes: list[Parameter] = ()) -> ControllerSettings:
        return read_settings(self, ControllerSettings, changes)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        return check_parameter_change(self, ControllerSettings, validate_settings, params)

    def _after_set_parameters(self, params: list[Parameter]) -> None:
        self.apply_settings(self._read_settings())

    def apply_settings(self, new: ControllerSettings) -> None:
        """Swap in validated settings; a running sweep continues from where the lens is."""
        now = time.monotonic()
        with self._lock:
            old, self._settings = self._settings, new
            waveform = new.waveform()
            if self._running:
                t = now - self._origin
                here = float(self._waveform.vergence_at(t))
                heading_far = self._waveform.heading_far_at(t)
                self._origin = now - waveform.time_of(here, heading_far)
            self._waveform = waveform
        if new.diagnostics_period_s != old.diagnostics_period_s:
            self._diag_timer.cancel()
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(new.diagnostics_period_s, self._publish_diagnostics)
        if new != old:
            self.get_logger().info(f"parameters updated: sweep {new.near_dpt:g} -> {new.far_dpt:g} dpt "
                                   f"in {new.sweep_duration_s:g} s, dwell {new.dwell_s:g} s, "
                                   f"{new.publish_rate_hz:g} Hz")

    # --- sweep control --------------------------------------------------------------------------
    def start_sweep(self) -> bool:
        """Start sweeping from the present command (no jump); False if it already was."""
        with self._lock:
            if self._running:
                return False
            self._origin = time.monotonic() - self._waveform.time_of(self._commanded_dpt, heading_far=True)
            self._running = True
            return True

    def stop_sweep(self) -> bool:
        """Hold the lens where it is; False if it was not sweeping."""
        with self._lock:
            if not self._running:
                return False
            self._hold_dpt = self._command_at(time.monotonic())
            self._running = False
            return True

    def _command_at(self, now: float) -> float:
        """The commanded vergence at monotonic time `now`; caller holds the lock."""
        if self._running:
            return float(self._waveform.vergence_at(now - self._origin))
        return self._hold_dpt

    def _on_start(self, request, response):
        changed = self.start_sweep()
        with self._lock:
            connected, error = self._connected, self._last_error
        response.success = True
        response.message = "sweep started" if changed else "already sweeping"
        if not connected:
            response.message += f"; lens not connected yet ({error or 'connecting'})"
        return response

    def _on_stop(self, request, response):
        changed = self.stop_sweep()
        response.success = True
        response.message = f"sweep stopped, holding {self._hold_dpt:.3f} dpt" if changed else "not sweeping"
        return response

    # --- lens I/O thread ------------------------------------------------------------------------
    def _io_loop(self) -> None:
        """Own the driver: connect, command the sweep, read and publish, reconnect when lost."""
        io = _IoState()
        while not self._stop_io.is_set():
            try:
                self._io_step(io)
            except Exception as exc:  # noqa: BLE001 - the stream must outlive any one bad cycle
                if not self.context.ok():
                    break  # shutting down (e.g. SIGINT): the publisher is already gone
                with self._lock:
                    self._errors += 1
                self.get_logger().error(f"lens I/O: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)
                self._stop_io.wait(0.1)
        if io.driver is not None:
            io.driver.close()

    def _io_step(self, io: _IoState) -> None:
        settings = self._settings
        now = time.monotonic()
        if io.driver is None or settings.driver_key() != io.driver_key:
            if io.driver is not None:
                io.driver.close()
            io.driver, io.driver_key = _make_driver(settings), settings.driver_key()
            io.next_attempt, io.failures = now, 0
            with self._lock:
                self._connected = False
        driver = io.driver
        if not driver.is_connected:
            if now < io.next_attempt:
                self._stop_io.wait(min(io.next_attempt - now, 0.05))
                return
            try:
                driver.connect()
            except LensError as exc:
                io.next_attempt = now + settings.reconnect_period_s
                self._note_disconnected(str(exc), settings)
                return
            io.failures = 0
            io.recent.clear()
            io.next_tick = time.monotonic()
            self._note_connected(settings, io.was_connected)
            io.was_connected = True
        try:
            with self._lock:
                command = self._command_at(time.monotonic())
                self._commanded_dpt = command
            driver.set_focus(command)
            t0 = self.get_clock().now().nanoseconds
            position = driver.read_focus()
            t1 = self.get_clock().now().nanoseconds
            stamp_ns = (t0 + t1) // 2
            io.recent.append((stamp_ns * 1e-9, position))
            self._publish_focus(stamp_ns, position, io.recent)
            if time.monotonic() >= io.next_temperature:
                io.next_temperature = time.monotonic() + TEMPERATURE_PERIOD_S
                self._temperature_c = driver.temperature()
            io.failures = 0
        except LensError as exc:
            io.failures += 1
            with self._lock:
                self._errors += 1
                self._last_error = str(exc)
            if not driver.is_connected or io.failures >= MAX_TRANSIENT_ERRORS:
                driver.close()
                io.next_attempt = time.monotonic() + settings.reconnect_period_s
                self._note_disconnected(str(exc), settings)
                return
            self.get_logger().warning(f"lens: {exc}", throttle_duration_sec=5.0)
        io.next_tick += 1.0 / settings.publish_rate_hz
        delay = io.next_tick - time.monotonic()
        if delay < -MAX_CATCH_UP_S:
            io.next_tick = time.monotonic()
        elif delay > 0:
            self._stop_io.wait(delay)

    def _publish_focus(self, stamp_ns: int, position: float, recent: deque) -> None:
        samples = np.asarray(recent, dtype=np.float64)
        samples = samples[samples[:, 0] >= samples[-1, 0] - VELOCITY_WINDOW_S]
        velocity = slope(samples[:, 0] - samples[-1, 0], samples[:, 1])
        msg = JointState()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        msg.name = ["focus"]
        msg.position = [float(position)]
        msg.velocity = [velocity]
        self._focus_pub.publish(msg)
        with self._lock:
            self._measured_dpt = float(position)
            self._published += 1

    def _note_connected(self, settings: ControllerSettings, was_connected: bool) -> None:
        with self._lock:
            self._connected = True
            if was_connected:
                self._reconnects += 1
        where = f" on {settings.port}" if settings.driver == "optotune" else ""
        self.get_logger().info(f"lens {'reconnected' if was_connected else 'connected'}{where}")

    def _note_disconnected(self, error: str, settings: ControllerSettings) -> None:
        with self._lock:
            first = self._connected or not self._last_error
            self._connected = False
            self._last_error = error
        if first:  # one line per loss, not one per retry
            self.get_logger().error(
                f"lens unavailable: {error}; retrying every {settings.reconnect_period_s:g} s")

    # --- diagnostics ----------------------------------------------------------------------------
    def status(self) -> dict:
        """A snapshot of the controller's health (also what /diagnostics carries)."""
        now = time.monotonic()
        with self._lock:
            mark_t, mark_n = self._rate_mark
            if now - mark_t >= 0.5:
                self._measured_rate_hz = (self._published - mark_n) / (now - mark_t)
                self._rate_mark = (now, self._published)
            s = self._settings
            return {
                "connected": self._connected, "driver": s.driver,
                "port": s.port if s.driver == "optotune" else "",
                "sweeping": self._running, "commanded_dpt": self._commanded_dpt,
                "measured_dpt": self._measured_dpt, "temperature_c": self._temperature_c,
                "errors": self._errors, "reconnects": self._reconnects,
                "publish_rate_hz": self._measured_rate_hz, "target_rate_hz": s.publish_rate_hz,
                "published": self._published, "last_error": self._last_error,
            }

    def _publish_diagnostics(self) -> None:
        st = self.status()
        if not st["connected"]:
            level, message = DIAG_ERROR, f"lens disconnected: {st['last_error'] or 'connecting'}"
        elif st["publish_rate_hz"] < 0.9 * st["target_rate_hz"]:
            level, message = DIAG_WARN, f"focus state at {st['publish_rate_hz']:.0f} Hz, below target"
        else:
            level = DIAG_OK
            message = "sweeping" if st["sweeping"] else f"holding {st['commanded_dpt']:.3f} dpt"
        hardware_id = f"{st['driver']}:{st['port']}" if st["port"] else st["driver"]
        status = diagnostic_status(f"{self.get_name()}: lens", level, message, hardware_id, st)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))

    def destroy_node(self):
        # getattr: a constructor that rejected its parameters never started the thread
        if getattr(self, "_stop_io", None) is not None:
            self._stop_io.set()
            if self._io_thread.is_alive():
                self._io_thread.join(timeout=2.0)
        return super().destroy_node()


def main(args=None) -> int:
    return spin_node_main(FocusControllerNode, "focus_controller", args)


if __name__ == "__main__":
    sys.exit(main())
