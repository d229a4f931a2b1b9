"""ROS 2 node `all_in_focus`: events + frames + lens state in, one all-in-focus image per job out.

Queue-plus-worker (image_pipeline's pattern): subscription callbacks only convert a message
and hand it to the JobAssembler under a lock (the same assembler `make eval` uses, so a bag
replayed through this node gives the jobs eval gives); jobs it completes go to a bounded
queue (oldest dropped and counted) that one worker thread drains through `run_pipeline`,
so a slow job never blocks the executor or the event stream.

Publishes /efs/all_in_focus (encoding, size and header of the input frame), /efs/refocus_map
and /efs/depth (32FC1) per job, and /diagnostics at 1 Hz on a steady clock (it keeps
reporting when a replayed bag's /clock stops).

Memory and drop policy (all counted in /diagnostics): the event subscription keeps at most
`events_queue_depth` packets (best effort: the oldest are overwritten when the callbacks fall
behind; seq gaps show as packets_lost); the assembler holds at most `max_buffered_events`
decoded events (13 bytes each) and drops the OLDEST beyond (events_dropped), skipping the jobs
whose sweep lost events (jobs_skipped) rather than publishing a wrong image; at most
`max_pending_frames` frames wait for their sweep (frames_dropped); at most `max_pending_jobs`
jobs wait for the worker, the oldest dropped (jobs_dropped). The pipeline runs in a child
process (`pipeline_process`), so these callbacks never wait for it. Every event packet that
reaches the callback is counted once: events_received = packets_accepted + packets_rejected +
stale_messages, and seq gaps (packets DDS or the queue lost) are packets_lost, so received +
lost = sent.

Memory cap (`memory_cap_bytes`; test_load floods at twice the measured capacity for 60 s and
checks the node's RSS against it): the process at rest (interpreter, rclpy, numba, DDS: ~300
MB), plus events_queue_depth x the largest packet (the subscription's history), plus 13 B x
max_buffered_events for each copy of buffered events that can exist at once: the buffer, the
sweep being cut into jobs, one per job (queued: max_pending_jobs; being cut: the frames of one
sweep; running and its pickled copy for the child), plus MEMORY_SLACK_BYTES for allocator and
DDS overhead. Defaults (16 M events, 4 jobs, 1000 x 64 KiB packets, 8 frames a sweep): about
300 MB + 64 MB + 64 MB + 16 x 208 MB = 3.8 GB in the worst case; a 1280x720 sweep of 0.25 s
at 30 M events/s holds 7.5 M events, so jobs rarely come near it. Lower max_buffered_events
to lower the cap (test_load: 2 M events, 2 jobs -> 300 + 32 + 64 + 9 x 26 MB = 630 MB; it
peaks near 400 MB). The pipeline child adds its own ~300 MB plus the one job it runs.

No silently wrong image. Input the pipeline cannot turn into a trustworthy image gives no
output and a counted reason (jobs_skipped, jobs_skipped_by_reason, last_skip in /diagnostics,
WARN for the period it happens in): a frame more than half saturated (the irradiance is unknown
there), a sweep with no events (fewer than 1 per 1000 pixels: the output would be the blurred
input passed off as all-in-focus), a sweep whose events were lost to overflow. Without any lens
state (/lens/focus_state never heard) frames cannot be placed in sweeps: /diagnostics says so
(WARN "no lens focus state ...") and the frames wait, bounded by max_pending_frames, then are
dropped and counted; output starts once the lens appears.

    python -m efs_ros.nodes.all_in_focus --ros-args -p backend:=classical -p method:=dense
"""
from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from event_camera_msgs.msg import EventPacket
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState

from efs_ros.core.assembler import AssemblerConfig, JobAssembler
from efs_ros.core.calibration import CalibrationError, RigCalibration
from efs_ros.core.images import encode_float, encode_frame, output_encoding
from efs_ros.core.pipeline import MERGES, METHODS, PipelineConfig, run_pipeline
from efs_ros.nodes.common import (
    DIAG_ERROR,
    DIAG_OK,
    DIAG_WARN,
    check_parameter_change,
    declare_settings,
    diagnostic_array,
    diagnostic_status,
    float_param,
    int_param,
    qos,
    read_settings,
    spin_node_main,
    take_queued,
    text_param,
)
from efs_ros.nodes.convert import as_uint8, joint_state_focus, restamped_camera_info, stamp_to_ns, uint8_array

EVENTS_TOPIC = "/event_camera/events"
FRAMES_TOPIC = "/camera/image_raw"
CAMERA_INFO_IN_TOPIC = "/camera/camera_info"
CAMERA_INFO_TOPIC = "/efs/camera_info"
FOCUS_TOPIC = "/lens/focus_state"
AIF_TOPIC = "/efs/all_in_focus"
REFOCUS_TOPIC = "/efs/refocus_map"
DEPTH_TOPIC = "/efs/depth"
DIAGNOSTICS_TOPIC = "/diagnostics"

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt", "classical")
CPU_BACKENDS = ("onnxruntime-cpu", "torch-cpu")
"""What `auto` passes over for the classical path unless the learned path is the single-pass
restoration net (see PipelineWorker._open)."""
LEARNED_PATHS = ("restore", "slices")
"""efs_ros.infer.LEARNED_PATHS (the node imports the inference package only when it opens one)."""
INPUTS = ("events", "frames", "focus")
MAX_HEADERS_KEPT = 512
"""Frame headers remembered for the outputs (frame_id); far more than frames in flight."""
POLL_S = 0.02
"""How often the worker asks the assembler for finished jobs (adds at most this to latency)."""
EVENT_BATCH = 500
"""Event packets taken per wake-up at most (0.5 s of 1 ms packets; ~10 ms of work), so frames
and lens states, in the same callback group, wait at most that long."""
FAILED_JOBS_ERROR = 3
"""Consecutive pipeline failures that turn the diagnostics to ERROR."""


EVENT_BYTES = 13
"""Bytes per buffered event (EVENT_DTYPE)."""
MEMORY_SLACK_BYTES = 64 * 2**20
"""Allocator fragmentation and DDS buffers beyond the subscription history."""


def memory_cap_bytes(max_buffered_events: int, max_pending_jobs: int, events_queue_depth: int,
                     packet_bytes: int, frames_per_sweep: int) -> int:
    """What the node process may hold beyond its size at rest (module docstring, "Memory cap")."""
    copies = 2 + max_pending_jobs + frames_per_sweep + 2
    return (events_queue_depth * packet_bytes + EVENT_BYTES * max_buffered_events * copies
            + MEMORY_SLACK_BYTES)


@dataclass(frozen=True)
class NodeSettings:
    """Every parameter of the node (besides use_sim_time); one snapshot per accepted change."""
    method: str = PipelineConfig.method
    merge: str = PipelineConfig.merge
    n_bins: int = PipelineConfig.n_bins
    patch_grid: int = 8
    threshold: float = 0.0
    backend: str = "auto"
    learned: str = "restore"
    models_dir: str = ""
    calibration_file: str = ""
    max_buffered_events: int = 16_000_000
    max_pending_frames: int = 64
    max_pending_jobs: int = 4
    events_queue_depth: int = 1000
    reliable_inputs: bool = False
    pipeline_process: bool = True
    input_timeout_s: float = 2.0
    idle_flush_s: float = 1.0
    fault_warn_fraction: float = 0.01
    fault_error_fraction: float = 0.5

    def pipeline_config(self, backend=None) -> PipelineConfig:
        """The job configuration; with an inference backend, its nets on the learned path
        asked for (restore when the backend ships EvRestoreNet, else the per-slice pair)."""
        nets = {}
        if backend is not None:
            from efs_ros.infer import pipeline_nets

            nets = pipeline_nets(backend, self.learned)
        return PipelineConfig(method=self.method, merge=self.merge, n_bins=self.n_bins,
                              patch_grid=self.patch_grid,
                              threshold=self.threshold if self.threshold > 0 else None, **nets)


_DESCRIPTORS = {
    "method": text_param("refocus-time selection", METHODS),
    "merge": text_param("how the refocused images are merged (classical path)", MERGES),
    "n_bins": int_param("time bins of the event stack over one sweep", 2, 4096),
    "patch_grid": int_param("patches per side for the golden / event_rate methods", 1, 64),
    "threshold": float_param("event contrast threshold; 0 = estimate it from each job", 0.0, 5.0),
    "backend": text_param("inference backend; auto = a GPU backend (tensorrt > onnxruntime-cuda > "
                          "torch-cuda), else onnxruntime-cpu for the restore path, else classical "
                          "(no models, or the per-slice nets without a GPU)", BACKENDS),
    "learned": text_param("learned path: restore = one pass of EvRestoreNet over the classical "
                          "image (fast on a CPU too); slices = EvRefocusNet per slice + EvMergeNet",
                          LEARNED_PATHS),
    "models_dir": text_param("folder with the exported nets ('' = the package's models)"),
    "calibration_file": text_param("rig calibration file (CONTRACT section 4: frame geometry and "
                                   "transfer, lens model, triggers); '' = a pixel-registered, linear, "
                                   "ideal-lens rig", read_only=True),
    "max_buffered_events": int_param("events held at most; beyond, the oldest are dropped "
                                     "(13 bytes each)", 10_000, 1_000_000_000),
    "max_pending_frames": int_param("frames waiting for their sweep to end", 1, 10_000),
    "max_pending_jobs": int_param("jobs waiting for the worker; beyond, the oldest is dropped",
                                  1, 1000),
    "events_queue_depth": int_param("subscription queue of the event topic", 1, 100_000,
                                    read_only=True),
    "reliable_inputs": text_param("subscribe with reliable QoS (replays that must not drop a "
                                  "message); default best effort matches every publisher",
                                  read_only=True),
    "pipeline_process": text_param("run the pipeline in a child process, so that it never "
                                   "starves the subscription callbacks of the GIL",
                                   read_only=True),
    "input_timeout_s": float_param("an input silent this long is reported (WARN)", 0.1, 3600.0),
    "idle_flush_s": float_param("all inputs silent this long: finish the jobs that are complete "
                                "(end of a replay); 0 = never", 0.0, 3600.0),
    "fault_warn_fraction": float_param("share of bad messages in a period that warns", 0.0, 1.0),
    "fault_error_fraction": float_param("share of bad messages in a period that is an error",
                                        0.0, 1.0),
}


def validate_settings(s: NodeSettings) -> str | None:
    """Why these settings cannot run, or None (ranges are enforced by the descriptors)."""
    if s.method not in METHODS:
        return f"method must be one of {METHODS}, got {s.method!r}"
    if s.merge not in MERGES:
        return f"merge must be one of {MERGES}, got {s.merge!r}"
    if s.backend not in BACKENDS:
        return f"backend must be one of {BACKENDS}, got {s.backend!r}"
    if s.learned not in LEARNED_PATHS:
        return f"learned must be one of {LEARNED_PATHS}, got {s.learned!r}"
    if s.calibration_file:
        try:
            RigCalibration.load(s.calibration_file)
        except CalibrationError as exc:
            return str(exc)
    if s.fault_warn_fraction > s.fault_error_fraction:
        return "fault_warn_fraction must not exceed fault_error_fraction"
    try:
        s.pipeline_config()
    except ValueError as exc:
        return str(exc)
    return None


@dataclass
class _Counters:
    """What the callbacks and the worker count; read under the node's lock."""
    received: dict = field(default_factory=lambda: dict.fromkeys(INPUTS, 0))
    last_arrival: dict = field(default_factory=lambda: dict.fromkeys(INPUTS))
    bad_messages: int = 0
    callback_errors: int = 0
    jobs_queued: int = 0
    jobs_dropped: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    failed_in_a_row: int = 0
    publish_errors: int = 0
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=64))
    age_ms: deque = field(default_factory=lambda: deque(maxlen=64))
    last_fault: str = ""


@dataclass
class BackendState:
    """Which inference backend runs the jobs, and why (for /diagnostics)."""
    name: str = "classical"
    note: str = ""
    error: bool = False


class PipelineWorker:
    """Runs jobs with the backend the settings ask for (opened once, reopened on change).

    Lives in the pipeline process: a learned backend's session is not picklable, so the
    process owns it and only jobs, settings and results cross the boundary.
    """

    def __init__(self):
        self._backend = None
        self._key = None
        self.state = BackendState()

    def run(self, job, settings: NodeSettings):
        key = (settings.backend, settings.models_dir, settings.learned)
        if key != self._key:
            self._open(*key)
        config = settings.pipeline_config(self._backend)
        t0 = time.perf_counter()
        result = run_pipeline(job, config)
        return result, 1e3 * (time.perf_counter() - t0), self.state

    def _open(self, name: str, models_dir: str, learned: str = "restore") -> None:
        self.close()
        self._key = (name, models_dir, learned)
        self.state = BackendState()
        if name == "classical":
            return
        try:
            from efs_ros.infer import load_backend

            backend = load_backend(name, models_dir or None)
        except Exception as exc:  # noqa: BLE001 - any failure falls back to the classical path
            detail = " ".join(str(exc).split())
            # auto without installed models is the documented fallback; an explicit request,
            # or models that are there but do not load, is an error
            self.state = BackendState("classical",
                                      f"{name} unavailable ({type(exc).__name__}: {detail})",
                                      name != "auto" or _models_installed(models_dir))
            return
        opened = getattr(backend, "name", name)
        single_pass = learned == "restore" and getattr(backend, "has_restore", False)
        if name == "auto" and opened in CPU_BACKENDS and not single_pass:
            # a live node must keep up: on CPU the per-slice nets take seconds per job
            # (onnxruntime-cpu at 256x192 on 2 cores: ~15 s, so nearly every frame was dropped);
            # classical keeps up, and so does the one restore pass
            backend.close()
            self.state = BackendState("classical", f"auto: no GPU backend here ({opened} only, "
                                      "seconds per job); set backend to onnxruntime or torch "
                                      "to run the nets on CPU anyway")
            return
        self._backend = backend
        path = "restore" if single_pass else "slices"
        self.state = BackendState(opened, f"learned path: {path}")

    def close(self) -> None:
        if self._backend is not None:
            try:
                self._backend.close()
            except Exception:  # noqa: BLE001 - closing a backend that failed is not news
                pass
            self._backend = None


def _models_installed(models_dir: str) -> bool:
    try:
        from efs_ros.nets.checkpoint import MANIFEST_NAME, default_models_dir
    except ImportError:
        return False
    folder = Path(models_dir) if models_dir else default_models_dir()
    return (folder / MANIFEST_NAME).exists()


_CHILD_WORKER: PipelineWorker | None = None


def _run_in_child(job, settings: NodeSettings | None):
    global _CHILD_WORKER
    if _CHILD_WORKER is None:
        _CHILD_WORKER = PipelineWorker()
    if job is None:  # warm-up
        _warm_up_pipeline()
        return None
    return _CHILD_WORKER.run(job, settings)


def _warm_up_pipeline() -> None:
    from efs_ros.core.pipeline import warm_up

    warm_up()


class PipelineRunner:
    """run_pipeline in a child process (default) or in this one.

    Why a process: the pipeline holds the GIL for long stretches of Python, and rclpy takes
    one message per subscription per executor wake-up, each of which needs the GIL several
    times; measured at 96x72 with a busy worker thread the node took ~90 messages/s per topic
    and lost most event packets. In a child process the callbacks keep their own interpreter.
    A crashed child (BrokenProcessPool) is replaced on the next job.
    """

    def __init__(self, use_process: bool):
        self.use_process = use_process
        self._pool = None
        self._local = None if use_process else PipelineWorker()

    def _ensure_pool(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: forking a process that runs DDS threads is unsafe
            self._pool = ProcessPoolExecutor(max_workers=1,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def warm_up(self) -> None:
        """Start the child, import the pipeline and load its compiled kernel now, not on the
        first job (~1-2 s; a few more the first time numba compiles it)."""
        if self.use_process:
            self._ensure_pool().submit(_run_in_child, None, None).result()
        else:
            _warm_up_pipeline()

    def run(self, job, settings: NodeSettings):
        if not self.use_process:
            return self._local.run(job, settings)
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._ensure_pool().submit(_run_in_child, job, settings).result()
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._local is not None:
            self._local.close()


class AllInFocusNode(Node):
    """The live all-in-focus node; constructible in any executor/context (`main()` is thin)."""

    def __init__(self, node_name: str = "all_in_focus", **kwargs):
        super().__init__(node_name, **kwargs)
        settings = declare_settings(self, NodeSettings, _DESCRIPTORS, validate_settings)
        self._settings = settings

        self._decoder_backend = self._warm_up_decoder()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        calibration = RigCalibration.load(settings.calibration_file) if settings.calibration_file \
            else RigCalibration()
        self._assembler = JobAssembler(AssemblerConfig(
            max_events=settings.max_buffered_events,
            max_pending_frames=settings.max_pending_frames, calibration=calibration))
        self._jobs: deque = deque()
        self._headers: OrderedDict[int, str] = OrderedDict()
        self._counts = _Counters()
        self._flushed = True
        self._runner = PipelineRunner(settings.pipeline_process)
        self._backend = BackendState(note="not opened yet (first job)")
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._started = time.monotonic()
        self._rate_mark = (time.monotonic(), dict(self._counts.received), 0, 0, 0, 0)
        self._rates: dict = {}

        reliability = ReliabilityPolicy.RELIABLE if settings.reliable_inputs \
            else ReliabilityPolicy.BEST_EFFORT

        def input_qos(depth: int) -> QoSProfile:
            return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability)

        inputs = MutuallyExclusiveCallbackGroup()
        self._events_sub = self.create_subscription(
            EventPacket, EVENTS_TOPIC, self._on_events, input_qos(settings.events_queue_depth),
            callback_group=inputs)
        self.create_subscription(Image, FRAMES_TOPIC, self._on_frame, input_qos(30),
                                 callback_group=inputs)
        self.create_subscription(JointState, FOCUS_TOPIC, self._on_focus, input_qos(500),
                                 callback_group=inputs)
        self.create_subscription(CameraInfo, CAMERA_INFO_IN_TOPIC, self._on_camera_info, input_qos(10),
                                 callback_group=inputs)
        self._aif_pub = self.create_publisher(Image, AIF_TOPIC, qos(depth=10))
        self._refocus_pub = self.create_publisher(Image, REFOCUS_TOPIC, qos(depth=10))
        self._depth_pub = self.create_publisher(Image, DEPTH_TOPIC, qos(depth=10))
        self._info_pub = self.create_publisher(CameraInfo, CAMERA_INFO_TOPIC, qos(depth=10))
        self._camera_info = None
        """The input camera's latest CameraInfo: the outputs keep the frame's geometry, so it is
        theirs, republished with each output's header (CONTRACT section 2)."""
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, qos(depth=10))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        housekeeping = MutuallyExclusiveCallbackGroup()
        self.create_timer(1.0, self._publish_diagnostics, callback_group=housekeeping,
                          clock=self._steady)
        self.create_timer(0.25, self._idle_check, callback_group=housekeeping, clock=self._steady)

        self._stop = False
        self._worker = threading.Thread(target=self._work_loop, name="all_in_focus_worker",
                                        daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"method {settings.method}, backend {settings.backend}, buffer "
            f"{settings.max_buffered_events} events, {settings.max_pending_jobs} pending jobs; "
            f"{EVENTS_TOPIC} + {FRAMES_TOPIC} + {FOCUS_TOPIC} -> {AIF_TOPIC}")

    def _warm_up_decoder(self) -> str:
        """Load (and JIT-compile) the EVT3 decoder now: done inside the first event callback
        it stalled the event stream for ~1 s, which a looping bag turned into lost sweeps."""
        try:
            from efs_ros.core.evt3 import warm_up
        except ImportError:  # a decoder without a compiled backend has nothing to warm
            return "numpy"
        try:
            return warm_up()
        except Exception as exc:  # noqa: BLE001 - the first packet will report it as a fault
            self.get_logger().warning(f"EVT3 decoder warm-up failed: {exc}")
            return "unknown"

    # --- parameters ----------------------------------------------------------------------------
    def _read_settings(self, changes=()) -> NodeSettings:
        return read_settings(self, NodeSettings, changes)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        return check_parameter_change(self, NodeSettings, validate_settings, params)

    def _after_set_parameters(self, params: list[Parameter]) -> None:
        new = self._read_settings()
        with self._lock:
            self._settings = new
            config = self._assembler.config
            config.max_events = new.max_buffered_events
            config.max_pending_frames = new.max_pending_frames
            self._trim_jobs()
        self.get_logger().info(f"parameters updated: method {new.method}, backend {new.backend}, "
                               f"n_bins {new.n_bins}, patch_grid {new.patch_grid}")

    @property
    def settings(self) -> NodeSettings:
        return self._settings

    # --- input callbacks: convert, hand to the assembler, queue finished jobs ------------------
    def _arrived(self, topic: str) -> None:
        self._counts.received[topic] += 1
        self._counts.last_arrival[topic] = time.monotonic()
        self._flushed = False

    def _on_events(self, msg: EventPacket) -> None:
        """This packet and those queued behind it (take_queued: one wake-up per batch, not
        per packet, so the node keeps up with 1 ms packets and more)."""
        self._add_event_packet(msg)
        for queued in take_queued(self._events_sub, EVENT_BATCH):
            self._add_event_packet(queued)

    def _add_event_packet(self, msg: EventPacket) -> None:
        try:
            stamp = stamp_to_ns(msg.header.stamp)
            with self._lock:
                self._arrived("events")
                self._assembler.add_event_packet(stamp, msg.width, msg.height, msg.encoding,
                                                 as_uint8(msg.events), seq=msg.seq,
                                                 is_bigendian=msg.is_bigendian)
        except Exception as exc:  # noqa: BLE001 - a bad message must never stop the node
            self._callback_failed("event packet", exc)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        """Optional input; a CameraInfo whose size is not the frames' would mislabel the outputs,
        so it is checked against them when they are published."""
        self._camera_info = msg

    def _on_frame(self, msg: Image) -> None:
        try:
            stamp = stamp_to_ns(msg.header.stamp)
            with self._lock:
                self._arrived("frames")
                accepted = self._assembler.add_frame_message(
                    stamp, msg.width, msg.height, msg.encoding, msg.step, as_uint8(msg.data),
                    bool(msg.is_bigendian))
                if accepted:
                    self._headers[stamp] = msg.header.frame_id
                    while len(self._headers) > MAX_HEADERS_KEPT:
                        self._headers.popitem(last=False)
        except Exception as exc:  # noqa: BLE001
            self._callback_failed("frame", exc)

    def _on_focus(self, msg: JointState) -> None:
        try:
            reading = joint_state_focus(msg)
            with self._lock:
                self._arrived("focus")
                if reading is None:
                    self._counts.bad_messages += 1
                    self._counts.last_fault = (f"focus state without a 'focus' joint position "
                                               f"(names {list(msg.name)}): ignored")
                    return
                stamp, position, velocity = reading
                self._assembler.add_focus(stamp, position, velocity)
        except Exception as exc:  # noqa: BLE001
            self._callback_failed("focus state", exc)

    def _callback_failed(self, what: str, exc: Exception) -> None:
        with self._lock:
            self._counts.callback_errors += 1
            self._counts.last_fault = f"{what}: {type(exc).__name__}: {exc}"
        self.get_logger().error(f"{what} dropped: {type(exc).__name__}: {exc}",
                                throttle_duration_sec=5.0)

    def _queue_jobs(self, jobs) -> None:
        """Caller holds the lock."""
        if not jobs:
            return
        self._jobs.extend(jobs)
        self._counts.jobs_queued += len(jobs)
        self._trim_jobs()

    def _trim_jobs(self) -> None:
        while len(self._jobs) > self._settings.max_pending_jobs:
            dropped = self._jobs.popleft()
            self._counts.jobs_dropped += 1
            self._counts.last_fault = (f"job {dropped.stamp_ns} dropped: the worker is behind "
                                       f"(max_pending_jobs {self._settings.max_pending_jobs})")

    def _idle_check(self) -> None:
        """End of a replay (every input silent): finish what is complete instead of waiting."""
        wait = self._settings.idle_flush_s
        if wait <= 0:
            return
        with self._lock:
            if self._flushed:
                return
            seen = [t for t in self._counts.last_arrival.values() if t is not None]
            if seen and time.monotonic() - max(seen) >= wait:
                self._flushed = True
                try:
                    self._queue_jobs(self._assembler.flush())
                except Exception as exc:  # noqa: BLE001
                    self._counts.callback_errors += 1
                    self._counts.last_fault = f"flush: {type(exc).__name__}: {exc}"

    # --- worker --------------------------------------------------------------------------------
    def _work_loop(self) -> None:
        """Collect finished jobs every POLL_S (not per message: a packet costs ~0.3 ms in the
        assembler already) and run them one at a time, newest kept when behind."""
        try:
            self._runner.warm_up()
        except Exception as exc:  # noqa: BLE001 - reported; the first job retries
            self.get_logger().error(f"pipeline process failed to start: {exc}")
        while True:
            with self._lock:
                while not self._stop:
                    self._queue_jobs(self._assembler.pop_jobs())
                    if self._jobs:
                        break
                    self._work.wait(POLL_S)
                if self._stop:
                    return
                job = self._jobs.popleft()
                settings = self._settings
            try:
                result, latency_ms, backend = self._runner.run(job, settings)
                if backend != self._backend:
                    log = self.get_logger().error if backend.error else self.get_logger().info
                    log(f"inference backend: {backend.name}"
                        + (f" ({backend.note})" if backend.note else ""))
                    self._backend = backend
            except Exception as exc:  # noqa: BLE001 - one bad job must not stop the worker
                with self._lock:
                    self._counts.jobs_failed += 1
                    self._counts.failed_in_a_row += 1
                    self._counts.last_fault = f"job {job.stamp_ns}: {type(exc).__name__}: {exc}"
                self.get_logger().error(f"job {job.stamp_ns} failed: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=5.0)
                continue
            try:
                self._publish_result(job, result)
            except Exception as exc:  # noqa: BLE001
                with self._lock:
                    self._counts.publish_errors += 1
                    self._counts.last_fault = f"publishing job {job.stamp_ns}: {exc}"
                continue
            age_ms = (self.get_clock().now().nanoseconds - job.stamp_ns) * 1e-6
            with self._lock:
                self._counts.jobs_done += 1
                self._counts.failed_in_a_row = 0
                self._counts.latency_ms.append(latency_ms)
                self._counts.age_ms.append(age_ms)

    def _publish_result(self, job, result) -> None:
        frame_id = self._headers.get(job.stamp_ns, "")
        outputs = (
            (self._aif_pub, encode_frame(result.all_in_focus, output_encoding(job.encoding),
                                         transfer=job.frame_transfer)),
            (self._refocus_pub, encode_float(result.refocus_map)),
            (self._depth_pub, encode_float(result.depth)),
        )
        info = self._camera_info
        shape = result.all_in_focus.shape
        if info is not None and (int(info.width), int(info.height)) == (shape[1], shape[0]):
            self._info_pub.publish(restamped_camera_info(info, job.stamp_ns, frame_id))
        elif info is not None:
            with self._lock:
                self._counts.bad_messages += 1
                self._counts.last_fault = (f"camera_info is {info.width}x{info.height}, outputs "
                                           f"{shape[1]}x{shape[0]}: /efs/camera_info not published")
        for publisher, fields_ in outputs:
            msg = Image()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(job.stamp_ns, 1_000_000_000)
            msg.header.frame_id = frame_id
            msg.height, msg.width = fields_.height, fields_.width
            msg.encoding, msg.is_bigendian, msg.step = fields_.encoding, 0, fields_.step
            msg.data = uint8_array(fields_.data)
            publisher.publish(msg)

    # --- diagnostics ---------------------------------------------------------------------------
    def status(self) -> tuple[int, str, dict]:
        """(level, message, values): the node's health, as /diagnostics carries it."""
        now = time.monotonic()
        with self._lock:
            s = self._settings
            c = self._counts
            st = self._assembler.stats()
            bad_now = (st["packets_rejected"] + st["decode_faults"] + st["frames_rejected"]
                       + st["focus_rejected"] + c.bad_messages + c.callback_errors)
            mark_t, mark_received, mark_jobs, mark_bad, mark_events, mark_skipped = self._rate_mark
            dt = now - mark_t
            if dt >= 0.5:
                self._rates = {f"{k}_hz": (c.received[k] - mark_received[k]) / dt for k in INPUTS}
                self._rates["events_per_s"] = (st["events"] - mark_events) / dt
                self._rates["jobs_hz"] = (c.jobs_done - mark_jobs) / dt
                total = sum(c.received[k] - mark_received[k] for k in INPUTS)
                self._rates["bad_fraction"] = (bad_now - mark_bad) / max(total, 1)
                self._rates["new_bad"] = bad_now - mark_bad
                self._rates["new_skipped"] = st["jobs_skipped"] - mark_skipped
                self._rate_mark = (now, dict(c.received), c.jobs_done, bad_now, st["events"],
                                   st["jobs_skipped"])
            rates = dict(self._rates)
            silent = {k: (now - t if t is not None else now - self._started)
                      for k, t in c.last_arrival.items()}
            latency = sorted(c.latency_ms)
            values = {
                **{k: round(v, 2) for k, v in rates.items() if not k.startswith("new_")},
                "job_latency_ms": latency[-1] if latency else 0.0,
                "job_latency_median_ms": latency[len(latency) // 2] if latency else 0.0,
                "job_age_ms": c.age_ms[-1] if c.age_ms else 0.0,
                **{f"{k}_received": c.received[k] for k in INPUTS},
                "events_decoded": st["events"],
                "jobs_done": c.jobs_done, "jobs_failed": c.jobs_failed,
                "jobs_pending": len(self._jobs), "max_pending_jobs": s.max_pending_jobs,
                "jobs_dropped": c.jobs_dropped,
                "buffer_events": st["events_buffered"], "max_buffered_events": s.max_buffered_events,
                "buffer_fill": st["buffer_fill"],
                "events_dropped": st["events_dropped_overflow"],
                "packets_accepted": st["packets"], "stale_messages": st["stale_messages"],
                "decode_faults": st["decode_faults"], "packets_rejected": st["packets_rejected"],
                "packets_lost": st["packets_lost"], "seq_restarts": st["seq_restarts"],
                "frames_rejected": st["frames_rejected"], "frames_dropped": st["frames_dropped"],
                "frames_without_sweep": st["frames_without_sweep"],
                "focus_rejected": st["focus_rejected"] + c.bad_messages,
                "jobs_skipped": st["jobs_skipped"],
                "jobs_skipped_by_reason": st["skipped_by_reason"], "last_skip": st["last_skip"],
                "frame_saturated_fraction": round(st["frame_saturated_fraction"], 4),
                "frames_pending": st["frames_pending"], "clock_resets": st["clock_resets"],
                "callback_errors": c.callback_errors, "publish_errors": c.publish_errors,
                "sweeps": st["sweeps"], "sensor_size": st["sensor_size"],
                "sync_source": st["sync_source"], "sync_drift_ppm": st["sync_drift_ppm"],
                "backend": self._backend.name, "backend_requested": s.backend,
                "backend_note": self._backend.note, "decoder": self._decoder_backend,
                "method": s.method,
                **{f"{k}_silent_s": round(v, 2) for k, v in silent.items()},
                "last_fault": st["last_fault"] or c.last_fault,
                "last_node_fault": c.last_fault,
            }
            failed_in_a_row = c.failed_in_a_row
            new_bad = rates.get("new_bad", 0)
            new_skipped = rates.get("new_skipped", 0)
            no_lens = c.last_arrival["focus"] is None and c.received["frames"] > 0
            bad_fraction = rates.get("bad_fraction", 0.0)
        level, message = DIAG_OK, "running"
        problems = []
        quiet = [k for k, v in silent.items() if v > s.input_timeout_s]
        if no_lens and silent["focus"] > s.input_timeout_s:
            quiet.remove("focus")
            problems.append((DIAG_WARN, f"no lens focus state on {FOCUS_TOPIC}: frames cannot be "
                                        f"placed in sweeps, no output ({values['frames_pending']} "
                                        f"waiting, {values['frames_dropped']} dropped)"))
        if quiet:
            problems.append((DIAG_WARN, f"{', '.join(quiet)} silent > {s.input_timeout_s:g} s"))
        if new_skipped:
            problems.append((DIAG_WARN, f"{new_skipped} job(s) skipped, no output for them "
                                        f"({values['last_skip']})"))
        if new_bad and bad_fraction >= s.fault_error_fraction:
            problems.append((DIAG_ERROR, f"{bad_fraction:.0%} of recent input rejected "
                                         f"({values['last_fault']})"))
        elif new_bad and bad_fraction >= s.fault_warn_fraction:
            problems.append((DIAG_WARN, f"{new_bad} bad input messages ({values['last_fault']})"))
        if failed_in_a_row >= FAILED_JOBS_ERROR:
            problems.append((DIAG_ERROR, f"{failed_in_a_row} jobs failed in a row "
                                         f"({values['last_node_fault']})"))
        if self._backend.error:
            problems.append((DIAG_ERROR, f"backend {self._backend.note}; running classical"))
        if values["jobs_dropped"] and values["jobs_pending"] >= s.max_pending_jobs:
            problems.append((DIAG_WARN, "worker behind: jobs dropped"))
        if values["buffer_fill"] > 0.9:
            problems.append((DIAG_WARN, f"event buffer {values['buffer_fill']:.0%} full"))
        if problems:
            level = max(p[0] for p in problems)
            message = "; ".join(p[1] for p in problems)
        return level, message, values

    def _publish_diagnostics(self) -> None:
        try:
            level, message, values = self.status()
            status = diagnostic_status(f"{self.get_name()}: pipeline", level, message, "", values)
            self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))
        except Exception as exc:  # noqa: BLE001 - diagnostics must never take the node down
            self.get_logger().error(f"diagnostics failed: {exc}", throttle_duration_sec=10.0)

    def destroy_node(self):
        with self._lock:
            self._stop = True
            self._work.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        self._runner.close()
        return super().destroy_node()


def main(args=None) -> int:
    # The pipeline worker holds the GIL for stretches of Python; a short switch interval keeps
    # the subscription callbacks (and so the best-effort event queue) from waiting behind it.
    sys.setswitchinterval(0.001)
    return spin_node_main(AllInFocusNode, "all_in_focus", args)


if __name__ == "__main__":
    sys.exit(main())
