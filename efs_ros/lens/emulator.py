"""An Optotune Lens Driver 4 on a pseudo-terminal, for testing drivers and nodes without hardware.

It speaks the wire protocol byte for byte (see `efs_ros.lens.optotune`), moves a simulated lens
toward the commanded focal power with a first-order lag, and can be made to misbehave: stop
replying, corrupt reply CRCs, be unplugged (pty closed, path removed) and replugged (a new pty
behind the same stable symlink), as a USB lens driver does.

Emulator choices where the manual leaves room: `PrDA` returns the simulated lens state (the real
driver echoes the set point) so the lag path is exercised; error replies are `E` + code:
0x01 bad command CRC, 0x02 unknown command, 0x03 command rejected (the `reject` fault).
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
from pathlib import Path

import numpy as np

from efs_ros.lens.optotune import (
    COMMANDS,
    DPT_SCALE,
    HANDSHAKE,
    HANDSHAKE_REPLY,
    TEMPERATURE_SCALE_C,
    crc16_arc,
    encode_reply,
)

ERR_BAD_CRC = 0x01
ERR_UNKNOWN_COMMAND = 0x02
ERR_REJECTED = 0x03
MODE_CURRENT = 1
MODE_FOCAL_POWER = 5
DEFAULT_PATH = "/tmp/efs_lens0"


class LensDriverEmulator:
    """Serve one emulated Lens Driver 4 at `path` (a symlink to the current /dev/pts/N).

    Fault switches (set any time from any thread): `silent` swallows every command without a
    reply; `corrupt_crc` flips the CRC of every reply; `reject` answers every command that has a
    reply with an error frame. `unplug()` / `replug()` wait until done.
    """

    def __init__(self, path: str | os.PathLike | None = None, time_constant_s: float = 0.003,
                 firmware_offset_dpt: float = 0.0, range_dpt: tuple[float, float] = (-5.0, 15.0),
                 temperature_c: float = 31.5, max_current_ma: float = 292.84, noise_mdpt: float = 0.0,
                 seed: int | None = None):
        if path is None:
            path = Path(tempfile.mkdtemp(prefix="efs_lens_")) / "lens0"
        self.path = Path(path)
        self.time_constant_s = float(time_constant_s)
        self.firmware_offset_dpt = float(firmware_offset_dpt)
        self.range_dpt = (float(range_dpt[0]), float(range_dpt[1]))
        self.temperature_c = float(temperature_c)
        self.max_current_ma = float(max_current_ma)
        self.noise_dpt = float(noise_mdpt) * 1e-3
        self.silent = False
        self.corrupt_crc = False
        self.reject = False
        self.counters = {"commands": 0, "bad_crc": 0, "unknown": 0, "handshakes": 0, "replugs": 0}
        self.last_raw_set: int | None = None
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

    def _raw(self, dpt: float) -> int:
        return int(np.clip(round((dpt + self.firmware_offset_dpt) * DPT_SCALE), -32768, 32767))

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
            match = [c for c in COMMANDS if c.startswith(bytes(pending[:len(c)]))]
            if not match:
                del pending[:1]  # not the start of any command: resynchronise byte by byte
                self.counters["unknown"] += 1
                if not self.silent:
                    replies.append(self._frame(bytes([ord("E"), ERR_UNKNOWN_COMMAND])))
                continue
            command = next((c for c in match if pending.startswith(c)), None)
            if command is None:
                break  # a command's name is still arriving
            size = len(command) + COMMANDS[command][0] + 2
            if len(pending) < size:
                break
            frame = bytes(pending[:size])
            del pending[:size]
            self.counters["commands"] += 1
            body, crc = frame[:-2], struct.unpack("<H", frame[-2:])[0]
            if self.silent:
                continue
            if crc != crc16_arc(body):
                self.counters["bad_crc"] += 1
                replies.append(self._frame(bytes([ord("E"), ERR_BAD_CRC])))
                continue
            if self.reject and COMMANDS[command][1] is not None:
                replies.append(self._frame(bytes([ord("E"), ERR_REJECTED])))
                continue
            reply = self._execute(command, body[len(command):])
            if reply is not None:
                replies.append(self._frame(reply))
        return replies

    def _frame(self, payload: bytes) -> bytes:
        frame = encode_reply(payload)
        if self.corrupt_crc:
            frame = frame[:-4] + bytes([frame[-4] ^ 0xFF, frame[-3] ^ 0x5A]) + frame[-2:]
        return frame

    def _execute(self, command: bytes, args: bytes) -> bytes | None:
        with self._state_lock:
            self._advance()
            if command == b"MwCA":
                self.mode = MODE_FOCAL_POWER
                lo, hi = (self._raw(v) for v in self.range_dpt)
                return b"MCA" + struct.pack(">Bhh", 0, lo, hi)
            if command == b"MwDA":
                self.mode = MODE_CURRENT
                return b"MDA"
            if command == b"MMA":
                return b"MMA" + bytes([self.mode])
            if command == b"PwDA":
                (raw,) = struct.unpack(">h", args[:2])
                self.last_raw_set = raw
                if self.mode == MODE_FOCAL_POWER:  # the device ignores focal power in current mode
                    dpt = raw / DPT_SCALE - self.firmware_offset_dpt
                    self._target_dpt = float(np.clip(dpt, *self.range_dpt))
                return None
            if command == b"PrDA":
                noise = self._rng.normal(0.0, self.noise_dpt) if self.noise_dpt > 0 else 0.0
                return b"PDA" + struct.pack(">h", self._raw(self._actual_dpt + noise))
            if command == b"TCA":
                return b"TCA" + struct.pack(">h", round(self.temperature_c / TEMPERATURE_SCALE_C))
            if command == b"CrMA":
                return b"CMA" + struct.pack(">H", round(self.max_current_ma * 100))
            if command == b"Aw":
                return None
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="efs_lens_emulator",
                                     description="Emulate an Optotune Lens Driver 4 on a pseudo-terminal.")
    parser.add_argument("--path", default=DEFAULT_PATH, help="stable symlink to serve (default %(default)s)")
    parser.add_argument("--time-constant-s", type=float, default=0.003)
    parser.add_argument("--firmware-offset-dpt", type=float, default=0.0)
    parser.add_argument("--noise-mdpt", type=float, default=0.0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    emulator = LensDriverEmulator(args.path, time_constant_s=args.time_constant_s,
                                  firmware_offset_dpt=args.firmware_offset_dpt, noise_mdpt=args.noise_mdpt)
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
