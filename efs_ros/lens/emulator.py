"""An Optotune Lens Driver 4 on a pseudo-terminal, for testing drivers and nodes without hardware.

It answers the byte layouts of the public table (REFERENCE.md in the shared folder, "Optotune Lens
Driver 4") with its own encoding of every reply, written from that table and not shared with
the driver in `efs_ros.lens.optotune`, so the two cannot drift together unseen. It holds a
simulated lens that follows the commanded focal power with a first-order lag, and can be made
to misbehave: stop replying, corrupt reply CRCs, reject commands, be unplugged (pty closed,
path removed) and replugged (a new pty behind the same stable symlink), as a USB driver does.

Choices where the public table leaves room: reply prefixes echo the command's letters (`PrDA`
-> `PD`, `MwCA` -> `MCA`, `PwTA` -> `PT`, ...); `PrDA` returns the focal-power set-point (the
optics, `focus_dpt`, reach it later); error replies are `E` + code: 0x01 bad command CRC (sent
for set commands too, unasked), 0x02 unknown command byte, 0x03 command rejected (the `reject`
fault); `PwTA` answers error 1 for lower >= upper and otherwise the lens's whole range.
"""
from __future__ import annotations

import argparse
import math
import os
import select
import signal
import struct
import sys
import tempfile
import threading
import time
import tty
from collections import deque
from pathlib import Path

import numpy as np

HANDSHAKE = b"Start"
HANDSHAKE_REPLY = b"Ready\r\n"
EOL = b"\r\n"
RAW_PER_DPT = 200
TYPE_A_OFFSET_DPT = 5.0
RAW_PER_DEG_C = 16  # TCA reads raw x 0.0625 C; PwTA takes limits x 16
CURRENT_FULL_SCALE = 4095

ERR_BAD_CRC = 0x01
ERR_UNKNOWN_COMMAND = 0x02
ERR_REJECTED = 0x03
MODE_CURRENT = 1
MODE_FOCAL_POWER = 5
DEFAULT_PATH = "/tmp/efs_lens0"
RECEIVED_KEPT = 4096

ARGUMENT_BYTES = {
    b"H": 0, b"V": 1, b"X": 0, b"CrMA": 2, b"TCA": 0, b"PwTA": 4, b"MwCA": 0, b"MwDA": 0,
    b"MMA": 0, b"PwDA": 4, b"PrDA": 4, b"Aw": 2, b"Ar": 2,
}
"""Every command the emulator knows, and how many argument bytes follow its name (then a CRC)."""
SET_COMMANDS = frozenset({b"PwDA", b"Aw"})
"""Commands answered by nothing on success."""


def crc16_arc_bitwise(data: bytes) -> int:
    """CRC-16/ARC one bit at a time (reflected poly 0xA001, init 0): the emulator's own, not the driver's."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def reply_frame(payload: bytes) -> bytes:
    """Payload, its CRC little endian, CR LF: every reply on the wire."""
    return payload + struct.pack("<H", crc16_arc_bitwise(payload)) + EOL


class LensDriverEmulator:
    """Serve one emulated Lens Driver 4 at `path` (a symlink to the current /dev/pts/N).

    `firmware_type` is the letter `H` reports: "A" encodes focal power as (dpt + 5) x 200, any
    other as dpt x 200. Fault switches (set any time from any thread): `silent` swallows every
    command without a reply; `corrupt_crc` flips the CRC of every reply; `reject` answers every
    command that has a reply with an error frame. `unplug()` / `replug()` wait until done.
    `received` holds the last complete command frames in arrival order (CRC included).
    """

    def __init__(self, path: str | os.PathLike | None = None, time_constant_s: float = 0.003,
                 firmware_type: str = "B", range_dpt: tuple[float, float] = (-5.0, 15.0),
                 temperature_c: float = 31.5, max_current_ma: float = 292.84, noise_mdpt: float = 0.0,
                 firmware_version: tuple[int, int, int, int] = (3, 11, 1024, 0),
                 serial_number: str = "EL123456", seed: int | None = None):
        if not (len(firmware_type) == 1 and firmware_type.isascii()):
            raise ValueError(f"firmware_type must be one ASCII character, got {firmware_type!r}")
        if not (len(serial_number) == 8 and serial_number.isascii()):
            raise ValueError(f"serial_number must be 8 ASCII characters, got {serial_number!r}")
        if path is None:
            path = Path(tempfile.mkdtemp(prefix="efs_lens_")) / "lens0"
        self.path = Path(path)
        self.time_constant_s = float(time_constant_s)
        self.firmware_type = firmware_type
        self.firmware_version = tuple(firmware_version)
        self.serial_number = serial_number
        self.range_dpt = (float(range_dpt[0]), float(range_dpt[1]))
        self.temperature_c = float(temperature_c)
        self.max_current_ma = float(max_current_ma)
        self.noise_dpt = float(noise_mdpt) * 1e-3
        self.silent = False
        self.corrupt_crc = False
        self.reject = False
        self.counters = {"commands": 0, "bad_crc": 0, "unknown": 0, "handshakes": 0, "replugs": 0}
        self.received: deque[bytes] = deque(maxlen=RECEIVED_KEPT)
        self.last_raw_set: int | None = None
        self.temperature_limits_c: tuple[float, float] | None = None
        self.current_raw = 0
        self.mode = MODE_CURRENT
        self._rng = np.random.default_rng(seed)
        self._state_lock = threading.Lock()
        self._target_dpt = 0.0
        self._actual_dpt = 0.0
        self._last_t = time.monotonic()
        self._master: int | None = None
        self._slave: int | None = None
        self.device: str | None = None
        self._requests: list[tuple[str, threading.Event]] = []
        self._requests_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> LensDriverEmulator:
        self._open_pty()
        self._thread = threading.Thread(target=self._serve, name="lens_emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._close_pty()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> LensDriverEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def unplug(self, timeout: float = 2.0) -> None:
        """Close the pty (the host side sees EIO) and remove the symlink, like pulling the USB cable."""
        self._request("unplug", timeout)

    def replug(self, timeout: float = 2.0) -> None:
        """A fresh pty behind the same symlink; the device comes back in current mode, as after power-up."""
        self._request("replug", timeout)

    def _request(self, what: str, timeout: float) -> None:
        # The serving thread owns the fds: closing one under its select() could hit a reused fd number.
        done = threading.Event()
        with self._requests_lock:
            self._requests.append((what, done))
        os.write(self._wake_w, b"x")
        if not done.wait(timeout):
            raise TimeoutError(f"lens emulator did not {what} within {timeout} s")

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF translation: binary replies pass untouched
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.device = os.ttyname(slave)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        os.symlink(self.device, tmp)
        os.replace(tmp, self.path)
        with self._state_lock:
            self.mode = MODE_CURRENT

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None
        try:
            if self.path.is_symlink() and os.readlink(self.path) == self.device:
                self.path.unlink()
        except OSError:
            pass

    # --- lens model -------------------------------------------------------------------------
    def _advance(self) -> None:
        now = time.monotonic()
        dt = max(0.0, now - self._last_t)
        self._last_t = now
        decay = math.exp(-dt / self.time_constant_s) if self.time_constant_s > 0 else 0.0
        self._actual_dpt = self._target_dpt + (self._actual_dpt - self._target_dpt) * decay

    @property
    def focus_dpt(self) -> float:
        """The emulated lens's present focal power (noise-free)."""
        with self._state_lock:
            self._advance()
            return self._actual_dpt

    @property
    def target_dpt(self) -> float:
        with self._state_lock:
            return self._target_dpt

    @property
    def offset_dpt(self) -> float:
        """How this firmware shifts focal power before scaling it to raw units."""
        return TYPE_A_OFFSET_DPT if self.firmware_type == "A" else 0.0

    def _raw(self, dpt: float) -> int:
        return int(np.clip(round((dpt + self.offset_dpt) * RAW_PER_DPT), -32768, 32767))

    def _dpt(self, raw: int) -> float:
        return raw / RAW_PER_DPT - self.offset_dpt

    # --- serving ----------------------------------------------------------------------------
    def _serve(self) -> None:
        pending = bytearray()
        while not self._stop.is_set():
            self._handle_requests(pending)
            fds = [self._wake_r] + ([self._master] if self._master is not None else [])
            try:
                readable, _, _ = select.select(fds, [], [], 0.2)
            except OSError:
                continue
            if self._wake_r in readable:
                os.read(self._wake_r, 64)
            if self._master is None or self._master not in readable:
                continue
            try:
                data = os.read(self._master, 4096)
            except BlockingIOError:
                continue
            except OSError:
                continue  # no host side open right now
            pending += data
            for reply in self._consume(pending):
                self._send(reply)

    def _handle_requests(self, pending: bytearray) -> None:
        with self._requests_lock:
            requests, self._requests = self._requests, []
        for what, done in requests:
            if what == "unplug" and self._master is not None:
                self._close_pty()
                pending.clear()
            elif what == "replug" and self._master is None:
                self._open_pty()
                self.counters["replugs"] += 1
            done.set()

    def _send(self, reply: bytes) -> None:
        if self._master is None:
            return
        view = memoryview(reply)
        deadline = time.monotonic() + 0.5
        while view and time.monotonic() < deadline:
            try:
                view = view[os.write(self._master, view):]
            except BlockingIOError:
                time.sleep(0.0005)
            except OSError:
                return

    def _consume(self, pending: bytearray) -> list[bytes]:
        """Take every complete command off the front of `pending`; return the replies."""
        replies = []
        while pending:
            if HANDSHAKE.startswith(bytes(pending[:len(HANDSHAKE)])):
                if len(pending) < len(HANDSHAKE):
                    break
                del pending[:len(HANDSHAKE)]
                self.counters["handshakes"] += 1
                if not self.silent:
                    replies.append(HANDSHAKE_REPLY)
                continue
            candidates = [name for name in ARGUMENT_BYTES if name.startswith(bytes(pending[:len(name)]))]
            if not candidates:
                del pending[:1]  # not the start of any command: resynchronise byte by byte
                self.counters["unknown"] += 1
                if not self.silent:
                    replies.append(self._error(ERR_UNKNOWN_COMMAND))
                continue
            command = next((name for name in candidates if pending.startswith(name)), None)
            if command is None:
                break  # a command's name is still arriving
            size = len(command) + ARGUMENT_BYTES[command] + 2
            if len(pending) < size:
                break
            frame = bytes(pending[:size])
            del pending[:size]
            self.counters["commands"] += 1
            self.received.append(frame)
            body, crc = frame[:-2], struct.unpack("<H", frame[-2:])[0]
            if self.silent:
                continue
            if crc != crc16_arc_bitwise(body):
                self.counters["bad_crc"] += 1
                replies.append(self._error(ERR_BAD_CRC))  # set commands too: nobody waits for it
                continue
            if self.reject and command not in SET_COMMANDS:
                replies.append(self._error(ERR_REJECTED))
                continue
            payload = self._execute(command, body[len(command):])
            if payload is not None:
                replies.append(self._frame(payload))
        return replies

    def _error(self, code: int) -> bytes:
        return self._frame(b"E" + bytes([code]))

    def _frame(self, payload: bytes) -> bytes:
        frame = reply_frame(payload)
        if self.corrupt_crc:
            frame = frame[:-4] + bytes([frame[-4] ^ 0xFF, frame[-3] ^ 0x5A]) + frame[-2:]
        return frame

    def _range_raw(self) -> tuple[int, int]:
        """(max raw, min raw): the order both range replies use."""
        return self._raw(self.range_dpt[1]), self._raw(self.range_dpt[0])

    def _execute(self, command: bytes, args: bytes) -> bytes | None:
        """The reply payload to one valid command (None: no reply), layouts as the public table has them."""
        with self._state_lock:
            self._advance()
            if command == b"H":
                return b"H" + self.firmware_type.encode("ascii")
            if command == b"V":
                return b"V" + struct.pack(">BBHH", *self.firmware_version)
            if command == b"X":
                return b"X" + self.serial_number.encode("ascii")
            if command == b"CrMA":
                return b"CMA" + struct.pack(">h", round(self.max_current_ma * 100))
            if command == b"TCA":
                return b"TCA" + struct.pack(">h", round(self.temperature_c * RAW_PER_DEG_C))
            if command == b"PwTA":
                upper_raw, lower_raw = struct.unpack(">hh", args)
                if lower_raw >= upper_raw:
                    return b"PT" + struct.pack(">Bhh", 1, 0, 0)
                self.temperature_limits_c = (lower_raw / RAW_PER_DEG_C, upper_raw / RAW_PER_DEG_C)
                return b"PT" + struct.pack(">Bhh", 0, *self._range_raw())
            if command == b"MwCA":
                self.mode = MODE_FOCAL_POWER
                return b"MCA" + struct.pack(">Bhh", 0, *self._range_raw())
            if command == b"MwDA":
                self.mode = MODE_CURRENT
                return b"MDA"
            if command == b"MMA":
                return b"MMA" + bytes([self.mode])
            if command == b"PwDA":
                (raw,) = struct.unpack(">h", args[:2])
                self.last_raw_set = raw
                if self.mode == MODE_FOCAL_POWER:  # the device ignores focal power in current mode
                    self._target_dpt = float(np.clip(self._dpt(raw), *self.range_dpt))
                return None
            if command == b"PrDA":
                noise = self._rng.normal(0.0, self.noise_dpt) if self.noise_dpt > 0 else 0.0
                return b"PD" + struct.pack(">h", self._raw(self._target_dpt + noise))
            if command == b"Aw":
                if self.mode == MODE_CURRENT:
                    (self.current_raw,) = struct.unpack(">h", args)
                return None
            if command == b"Ar":
                return b"A" + struct.pack(">h", self.current_raw)
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="efs_lens_emulator",
                                     description="Emulate an Optotune Lens Driver 4 on a pseudo-terminal.")
    parser.add_argument("--path", default=DEFAULT_PATH, help="stable symlink to serve (default %(default)s)")
    parser.add_argument("--time-constant-s", type=float, default=0.003)
    parser.add_argument("--firmware-type", default="B",
                        help="letter the H query reports; A encodes (dpt + 5) x 200 (default %(default)s)")
    parser.add_argument("--noise-mdpt", type=float, default=0.0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    emulator = LensDriverEmulator(args.path, time_constant_s=args.time_constant_s,
                                  firmware_type=args.firmware_type, noise_mdpt=args.noise_mdpt)
    try:
        emulator.start()
    except OSError as exc:
        print(f"efs_lens_emulator: error: cannot serve {args.path}: {exc}", file=sys.stderr)
        return 1

    def toggle_plug(*_):
        threading.Thread(target=emulator.replug if not emulator.plugged else emulator.unplug).start()

    def toggle_silent(*_):
        emulator.silent = not emulator.silent

    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, toggle_plug)
    signal.signal(signal.SIGUSR2, toggle_silent)
    print(args.path, flush=True)
    print(f"efs_lens_emulator: serving {emulator.device} at {args.path} (pid {os.getpid()}; "
          "SIGUSR1 toggles unplug/replug, SIGUSR2 toggles silence)", file=sys.stderr, flush=True)
    while not stop.is_set():
        stop.wait(0.5)
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
