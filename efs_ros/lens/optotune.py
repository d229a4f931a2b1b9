"""Optotune Lens Driver 4 over a serial port: focal-power control with CRC-checked replies.

Wire format (Lens Driver 4 manual, checked against public drivers): 115200 8N1; the host sends
`Start` and the driver answers `Ready\\r\\n`. Every later command is ASCII letters, big-endian
binary arguments, then the CRC-16/ARC of those bytes, little endian. Replies are the command
with its `r`/`w` letter dropped (`PrDA` -> `PDA`), big-endian data, the CRC-16/ARC of the reply
bytes (little endian) and `\\r\\n`; an error reply starts with `E`. Because binary data and CRCs
may contain `\\r\\n`, replies are framed by their known length, never by line.
"""
from __future__ import annotations

import math
import os
import struct
import termios
import threading
import time

import serial

from efs_ros.lens.base import LensDriver, LensError

DPT_SCALE = 200.0
"""Raw focal-power units per diopter (`PwDA` / `PrDA`)."""
TEMPERATURE_SCALE_C = 0.0625
HANDSHAKE = b"Start"
HANDSHAKE_REPLY = b"Ready\r\n"
EOL = b"\r\n"
ERROR_PREFIX = b"E"
MAX_ERROR_FRAME = 32

# command -> (number of argument bytes, reply prefix or None, reply data bytes)
COMMANDS: dict[bytes, tuple[int, bytes | None, int]] = {
    b"MwCA": (0, b"MCA", 5),   # focal-power mode; reply: status byte, min and max raw power
    b"MwDA": (0, b"MDA", 0),   # current (DC) mode
    b"MMA": (0, b"MMA", 1),    # query mode
    b"PwDA": (4, None, 0),     # set focal power: int16 raw + 2 zero bytes, no reply
    b"PrDA": (4, b"PDA", 2),   # read focal power: 4 zero bytes -> int16 raw
    b"TCA": (0, b"TCA", 2),    # temperature: int16 raw x 0.0625 C
    b"CrMA": (2, b"CMA", 2),   # max output current: 2 zero bytes -> uint16 in 1/100 mA
    b"Aw": (2, None, 0),       # set current: int16, scaled by 4095 / max current
}


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc16_table()


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC (a.k.a. CRC-16/IBM): reflected poly 0xA001, init 0, no final xor."""
    crc = 0
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(payload: bytes) -> bytes:
    """The payload followed by its CRC, little endian (how every command goes on the wire)."""
    return payload + struct.pack("<H", crc16_arc(payload))


def encode_reply(payload: bytes) -> bytes:
    """A reply as the driver sends it: payload, CRC (little endian), CR LF."""
    return with_crc(payload) + EOL


def dpt_to_raw(dpt: float, offset_dpt: float = 0.0) -> int:
    """Focal power in diopters to the driver's int16 units; raises LensError when unrepresentable."""
    if not math.isfinite(dpt):
        raise LensError(f"focal power must be finite, got {dpt}")
    raw = round((dpt + offset_dpt) * DPT_SCALE)
    if not -32768 <= raw <= 32767:
        raise LensError(f"focal power {dpt:.3f} dpt (offset {offset_dpt:g}) is outside the int16 range")
    return raw


def raw_to_dpt(raw: int, offset_dpt: float = 0.0) -> float:
    return raw / DPT_SCALE - offset_dpt


def check_reply(frame: bytes, prefix: bytes, data_len: int, what: str) -> bytes:
    """Validate one complete reply frame and return its data bytes; raises LensError."""
    if frame[-2:] != EOL:
        raise LensError(f"malformed reply to {what}: no CR LF at the end ({frame!r})")
    body, crc_bytes = frame[:-4], frame[-4:-2]
    got, expected = struct.unpack("<H", crc_bytes)[0], crc16_arc(body)
    if got != expected:
        raise LensError(f"bad CRC in reply to {what}: got 0x{got:04X}, expected 0x{expected:04X}")
    if body[:1] == ERROR_PREFIX and prefix[:1] != ERROR_PREFIX:
        raise LensError(f"lens driver answered {what} with error {body.hex(' ').upper()}")
    if not body.startswith(prefix) or len(body) != len(prefix) + data_len:
        raise LensError(f"unexpected reply to {what}: {body!r}")
    return body[len(prefix):]


class OptotuneLens(LensDriver):
    """Optotune Lens Driver 4 in focal-power mode, over pyserial.

    `firmware_offset_dpt`: some firmware encodes focal power as (dpt + 5) x 200; set 5.0 there.
    `timeout` bounds every reply wait in seconds. An unplugged device (SerialException/OSError,
    vanished port) marks the driver disconnected; `reconnect()` reopens the same path.
    """

    def __init__(self, port: str, baudrate: int = 115200, timeout: float = 0.05,
                 firmware_offset_dpt: float = 0.0):
        if not port:
            raise ValueError("OptotuneLens needs a serial port path (e.g. /dev/ttyACM0)")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 s, got {timeout}")
        self.port = port
        self.baudrate = int(baudrate)
        self.timeout = float(timeout)
        self.firmware_offset_dpt = float(firmware_offset_dpt)
        self.focal_power_range_dpt: tuple[float, float] | None = None
        self.counters = {"commands": 0, "no_reply": 0, "bad_crc": 0, "device_errors": 0, "disconnects": 0}
        self._serial: serial.Serial | None = None
        self._max_current_ma: float | None = None
        self._lock = threading.RLock()

    # --- connection -------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._serial is not None

    def connect(self) -> None:
        with self._lock:
            self.close()
            try:
                self._serial = serial.Serial(self.port, self.baudrate, bytesize=serial.EIGHTBITS,
                                             parity=serial.PARITY_NONE, stopbits=serial.STOPBITS_ONE,
                                             timeout=self.timeout, write_timeout=self.timeout)
            except (serial.SerialException, OSError, ValueError) as exc:
                self._serial = None
                reason = os.strerror(exc.errno) if getattr(exc, "errno", None) else _one_line(exc)
                raise LensError(f"cannot open lens port {self.port}: {reason}") from exc
            try:
                self._handshake()
                data = self._transact(b"MwCA")
                status, lo, hi = struct.unpack(">Bhh", data)
                self.focal_power_range_dpt = (raw_to_dpt(lo, self.firmware_offset_dpt),
                                              raw_to_dpt(hi, self.firmware_offset_dpt))
            except LensError:
                self.close()
                raise

    def close(self) -> None:
        with self._lock:
            ser, self._serial = self._serial, None
            if ser is not None:
                try:
                    ser.close()
                except Exception:  # noqa: BLE001 - closing a vanished device may fail; it is gone anyway
                    pass

    def _handshake(self) -> None:
        ser = self._io()
        self._guarded(ser.reset_input_buffer)
        self._guarded(ser.write, HANDSHAKE)
        deadline = time.monotonic() + self.timeout
        received = bytearray()
        while not received.endswith(HANDSHAKE_REPLY):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ser.timeout = remaining
            chunk = self._guarded(ser.read, 1)
            if not chunk:
                break
            received += chunk
        if not received.endswith(HANDSHAKE_REPLY):
            self.counters["no_reply"] += 1
            got = f"got {bytes(received[-16:])!r}" if received else "no reply"
            raise LensError(f"lens driver on {self.port} did not answer 'Start' with 'Ready' "
                            f"within {self.timeout * 1e3:.0f} ms ({got})")

    # --- commands ---------------------------------------------------------------------------
    def set_focus(self, dpt: float) -> None:
        raw = dpt_to_raw(dpt, self.firmware_offset_dpt)
        self._transact(b"PwDA", struct.pack(">h", raw) + b"\x00\x00")

    def read_focus(self) -> float:
        (raw,) = struct.unpack(">h", self._transact(b"PrDA", b"\x00" * 4))
        return raw_to_dpt(raw, self.firmware_offset_dpt)

    def temperature(self) -> float | None:
        (raw,) = struct.unpack(">h", self._transact(b"TCA"))
        return raw * TEMPERATURE_SCALE_C

    def max_current_ma(self) -> float:
        """The driver's maximum output current (mA), also the scale of `set_current_ma`."""
        (raw,) = struct.unpack(">H", self._transact(b"CrMA", b"\x00\x00"))
        self._max_current_ma = raw / 100.0
        return self._max_current_ma

    def set_current_ma(self, current_ma: float) -> None:
        """Drive a current (only meaningful in current mode, `MwDA`)."""
        max_ma = self._max_current_ma or self.max_current_ma()
        if not (math.isfinite(current_ma) and abs(current_ma) <= max_ma):
            raise LensError(f"current {current_ma} mA is outside +-{max_ma:g} mA")
        self._transact(b"Aw", struct.pack(">h", round(current_ma / max_ma * 4095)))

    # --- transport --------------------------------------------------------------------------
    def _io(self) -> serial.Serial:
        if self._serial is None:
            raise LensError(f"lens on {self.port} is not connected")
        return self._serial

    def _guarded(self, fn, *args):
        """Run one pyserial call; a serial/OS failure means the device is gone."""
        try:
            return fn(*args)
        except (serial.SerialException, OSError, termios.error, TypeError, AttributeError) as exc:
            # pyserial raises TypeError/AttributeError when its fd vanished under it.
            self.counters["disconnects"] += 1
            self.close()
            raise LensError(f"lens on {self.port} disconnected: {_one_line(exc)}") from exc

    def _transact(self, command: bytes, args: bytes = b"") -> bytes:
        """Send one command; return the reply's data bytes (b'' for commands without reply)."""
        n_args, prefix, data_len = COMMANDS[command]
        if len(args) != n_args:
            raise ValueError(f"{command!r} takes {n_args} argument bytes, got {len(args)}")
        what = command.decode()
        with self._lock:
            ser = self._io()
            self.counters["commands"] += 1
            if prefix is not None:
                # A late reply to an earlier, timed-out command must not pass as this one's.
                self._guarded(ser.reset_input_buffer)
            self._guarded(ser.write, with_crc(command + args))
            if prefix is None:
                return b""
            frame = self._read_frame(ser, len(prefix) + data_len + 4, what)
            try:
                return check_reply(frame, prefix, data_len, what)
            except LensError as exc:
                key = "bad_crc" if "CRC" in str(exc) else "device_errors"
                self.counters[key] += 1
                raise

    def _read_frame(self, ser: serial.Serial, length: int, what: str) -> bytes:
        """Read one reply: `length` bytes, or a shorter error frame ('E...' ending in CR LF)."""
        deadline = time.monotonic() + self.timeout
        frame = bytearray()
        limit = length
        while len(frame) < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ser.timeout = remaining
            is_error = frame[:1] == ERROR_PREFIX
            # Error frames have their own length: read them byte by byte up to a CRC-valid CR LF.
            chunk = self._guarded(ser.read, 1 if not frame or is_error else limit - len(frame))
            if not chunk:
                break
            frame += chunk
            if frame[:1] == ERROR_PREFIX:
                limit = max(length, MAX_ERROR_FRAME)
                if _is_complete_frame(frame):
                    return bytes(frame)
        if len(frame) < length:
            self.counters["no_reply"] += 1
            if not frame:
                raise LensError(f"no reply to {what} from {self.port} within {self.timeout * 1e3:.0f} ms")
            raise LensError(f"incomplete reply to {what} from {self.port}: {len(frame)} of {length} "
                            f"bytes within {self.timeout * 1e3:.0f} ms")
        return bytes(frame)


def _is_complete_frame(frame: bytes) -> bool:
    return (len(frame) >= 5 and frame.endswith(EOL)
            and struct.unpack("<H", frame[-4:-2])[0] == crc16_arc(frame[:-4]))


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, termios.error) and len(exc.args) == 2:
        return str(exc.args[1])
    return " ".join(str(exc).split()) or type(exc).__name__
