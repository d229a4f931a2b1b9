"""Optotune Lens Driver 4 over a serial port: focal-power control with CRC-checked replies.

Wire format as the public drivers for it use it (REFERENCE.md in the shared folder, "Optotune Lens
Driver 4"): 115200 8N1; the host sends `Start` and the driver answers `Ready\\r\\n`. A command is
ASCII letters, big-endian binary arguments, then the CRC-16/ARC of those bytes, little endian.
A reply is a payload, the CRC-16/ARC of the payload (little endian) and `\\r\\n`; the payload is
a few prefix bytes, which this driver skips, then big-endian fields. Binary fields and CRCs may
contain `\\r\\n`, so replies are framed by their known length, never by line.

Set commands (`PwDA`, `Aw`) are not answered on success, but any command with a bad CRC gets an
error reply nobody waits for; so the input is drained before every command. Error replies are
not in the public table; this driver takes a CRC-valid frame starting with `E` for one.
"""
from __future__ import annotations

import math
import os
import struct
import termios
import threading
import time
from dataclasses import dataclass

import serial

from efs_ros.lens.base import LensDriver, LensError

DPT_SCALE = 200.0
"""Raw focal-power units per diopter (`PwDA`, `PrDA`, `MwCA`, `PwTA`)."""
TYPE_A_OFFSET_DPT = 5.0
"""Firmware type A encodes focal power as (dpt + 5) x 200; other types as dpt x 200."""
TEMPERATURE_SCALE_C = 0.0625
"""Degrees Celsius per raw unit of `TCA`."""
TEMPERATURE_LIMIT_SCALE = 16
"""Raw units per degree Celsius in the arguments of `PwTA`."""
CURRENT_FULL_SCALE = 4095
"""`Aw` / `Ar` raw value at the driver's maximum output current."""
HANDSHAKE = b"Start"
HANDSHAKE_REPLY = b"Ready\r\n"
EOL = b"\r\n"
TRAILER_BYTES = 4
"""CRC (2 bytes, little endian) and CR LF after every reply payload."""
ERROR_MARK = b"E"
MAX_ERROR_FRAME = 32
"""Longest frame read while looking for the end of an error reply."""
FOCAL_POWER_MODE = 5
CURRENT_MODE = 1


@dataclass(frozen=True)
class CommandLayout:
    """What one command sends after its name, and what comes back (REFERENCE table)."""

    arg_bytes: int
    reply_prefix_bytes: int | None
    """Bytes to skip at the start of the reply payload; None: no reply on success."""
    reply_fields: str = ""
    """struct format of the big-endian fields after the prefix."""

    @property
    def has_reply(self) -> bool:
        return self.reply_prefix_bytes is not None

    @property
    def payload_bytes(self) -> int:
        return (self.reply_prefix_bytes or 0) + struct.calcsize(self.reply_fields or ">")

    @property
    def reply_bytes(self) -> int:
        """The whole reply frame: payload, CRC, CR LF."""
        return self.payload_bytes + TRAILER_BYTES


LAYOUTS: dict[bytes, CommandLayout] = {
    b"H": CommandLayout(0, 1, ">c"),          # firmware type: one ASCII letter
    b"V": CommandLayout(1, 1, ">BBHH"),       # firmware version: major, minor, build, patch
    b"X": CommandLayout(0, 1, ">8s"),         # lens serial number
    b"CrMA": CommandLayout(2, 3, ">h"),       # maximum output current, 1/100 mA
    b"TCA": CommandLayout(0, 3, ">h"),        # temperature, raw x 0.0625 C
    b"PwTA": CommandLayout(4, 2, ">Bhh"),     # temperature limits -> error, max raw, min raw
    b"MwCA": CommandLayout(0, 3, ">Bhh"),     # focal-power mode -> error, max raw, min raw
    b"MwDA": CommandLayout(0, 3),             # current mode
    b"MMA": CommandLayout(0, 3, ">B"),        # active mode: 1 current, 5 focal power
    b"PwDA": CommandLayout(4, None),          # set focal power: int16 raw, 00 00
    b"PrDA": CommandLayout(4, 2, ">h"),       # read focal power set-point: 00 00 00 00 -> raw
    b"Aw": CommandLayout(2, None),            # set current: int16, 4095 = maximum current
    b"Ar": CommandLayout(2, 1, ">h"),         # read current: 00 00 -> int16, same scale
}


class ReplyCrcError(LensError):
    """A reply arrived whole but its CRC does not match: line noise or a desynchronised stream."""


class DeviceReplyError(LensError):
    """The lens driver answered with an error frame instead of the reply asked for."""


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


def encode_command(command: bytes, args: bytes = b"") -> bytes:
    """The exact bytes sent for one command; ValueError for an unknown command or wrong arguments."""
    layout = LAYOUTS.get(command)
    if layout is None:
        raise ValueError(f"unknown Lens Driver 4 command {command!r}")
    if len(args) != layout.arg_bytes:
        raise ValueError(f"{command!r} takes {layout.arg_bytes} argument bytes, got {len(args)}")
    return with_crc(command + args)


def split_frame(frame: bytes) -> tuple[bytes, int]:
    """(payload, CRC as sent) of a reply frame."""
    return frame[:-TRAILER_BYTES], struct.unpack("<H", frame[-TRAILER_BYTES:-len(EOL)])[0]


def is_error_frame(frame: bytes) -> bool:
    """A complete error reply: `E`, a code, CRC, CR LF. Reply prefixes echo the command's letters
    and no command starts with `E`, so no genuine reply passes for one."""
    if frame[:1] != ERROR_MARK or len(frame) <= TRAILER_BYTES or not frame.endswith(EOL):
        return False
    payload, crc = split_frame(frame)
    return crc == crc16_arc(payload)


def decode_reply(command: bytes, frame: bytes) -> tuple:
    """The fields of one complete reply frame to `command`, prefix skipped; raises LensError."""
    layout = LAYOUTS[command]
    what = command.decode()
    if is_error_frame(frame):
        error = split_frame(frame)[0].hex(" ").upper()
        raise DeviceReplyError(f"lens driver answered {what} with error {error}")
    if len(frame) != layout.reply_bytes:
        raise LensError(f"reply to {what} has {len(frame)} bytes, expected {layout.reply_bytes}")
    if not frame.endswith(EOL):
        raise LensError(f"malformed reply to {what}: no CR LF at the end ({frame!r})")
    payload, crc = split_frame(frame)
    expected = crc16_arc(payload)
    if crc != expected:
        raise ReplyCrcError(f"bad CRC in reply to {what}: got 0x{crc:04X}, expected 0x{expected:04X}")
    if not layout.reply_fields:
        return ()
    return struct.unpack(layout.reply_fields, payload[layout.reply_prefix_bytes:])


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


def offset_for_firmware(firmware_type: str) -> float:
    """The focal-power encoding offset a firmware type implies (type A only is shifted)."""
    return TYPE_A_OFFSET_DPT if firmware_type == "A" else 0.0


class OptotuneLens(LensDriver):
    """Optotune Lens Driver 4 in focal-power mode, over pyserial.

    `firmware_offset_dpt`: None (default) takes it from the firmware type (`H`) at connect:
    5.0 for type A, else 0.0; a number overrides that, for firmware the public table misses.
    `temperature_limits_c` = (lower, upper): sent with `PwTA` at connect, and the focal-power
    range it allows replaces the one of focal-power mode. `timeout` bounds every reply wait in
    seconds. An unplugged device (SerialException/OSError, vanished port) marks the driver
    disconnected; `reconnect()` reopens the same path.
    """

    def __init__(self, port: str, baudrate: int = 115200, timeout: float = 0.05,
                 firmware_offset_dpt: float | None = None,
                 temperature_limits_c: tuple[float, float] | None = None):
        if not port:
            raise ValueError("OptotuneLens needs a serial port path (e.g. /dev/ttyACM0)")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 s, got {timeout}")
        if firmware_offset_dpt is not None and not math.isfinite(firmware_offset_dpt):
            raise ValueError(f"firmware_offset_dpt must be finite or None, got {firmware_offset_dpt}")
        self.port = port
        self.baudrate = int(baudrate)
        self.timeout = float(timeout)
        self._offset_override = None if firmware_offset_dpt is None else float(firmware_offset_dpt)
        self.temperature_limits_c = temperature_limits_c
        self.firmware_type: str | None = None
        self.firmware_offset_dpt: float = self._offset_override or 0.0
        """The encoding offset in use: set at connect from the override or the firmware type."""
        self.focal_power_range_dpt: tuple[float, float] | None = None
        """(min, max) focal power the driver allows, from `MwCA` (or `PwTA`) at connect."""
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
                self.firmware_type = self.read_firmware_type()
                self.firmware_offset_dpt = (self._offset_override if self._offset_override is not None
                                            else offset_for_firmware(self.firmware_type))
                self.focal_power_range_dpt = self.to_focal_power_mode()
                if self.temperature_limits_c is not None:
                    self.focal_power_range_dpt = self.set_temperature_limits(*self.temperature_limits_c)
            except LensError:
                self.close()
                raise

    def close(self) -> None:
        with self._lock:
            ser, self._serial = self._serial, None
            self._max_current_ma = None
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

    # --- identity and modes -----------------------------------------------------------------
    def read_firmware_type(self) -> str:
        """The firmware type letter (`H`); it decides how focal power is encoded."""
        (letter,) = self._transact(b"H")
        try:
            return letter.decode("ascii")
        except UnicodeDecodeError:
            raise LensError(f"lens driver reported a non-ASCII firmware type {letter!r}") from None

    def firmware_version(self) -> tuple[int, int, int, int]:
        """(major, minor, build, patch) of the driver's firmware (`V`)."""
        return self._transact(b"V", b"\x00")

    def serial_number(self) -> str:
        """The lens's serial number (`X`), for diagnostics and logs."""
        (text,) = self._transact(b"X")
        return text.decode("ascii", errors="replace")

    def mode(self) -> int:
        """The active mode (`MMA`): CURRENT_MODE or FOCAL_POWER_MODE."""
        return self._transact(b"MMA")[0]

    def to_focal_power_mode(self) -> tuple[float, float]:
        """Switch to focal-power control (`MwCA`); returns the allowed (min, max) focal power."""
        error, max_raw, min_raw = self._transact(b"MwCA")
        if error:
            self.counters["device_errors"] += 1
            raise LensError(f"lens driver refused focal-power mode (MwCA error {error})")
        return (raw_to_dpt(min_raw, self.firmware_offset_dpt), raw_to_dpt(max_raw, self.firmware_offset_dpt))

    def to_current_mode(self) -> None:
        """Switch to direct current control (`MwDA`), the mode `set_current_ma` needs."""
        self._transact(b"MwDA")

    def set_temperature_limits(self, lower_c: float, upper_c: float) -> tuple[float, float]:
        """Set the temperature limits (`PwTA`); returns the (min, max) focal power they allow."""
        if not -2048 <= lower_c < upper_c <= 2047:  # also false for NaN: int16 x 16, lower first
            raise LensError(f"temperature limits need -2048 <= lower < upper <= 2047 C, "
                            f"got {lower_c}..{upper_c}")
        limits = [round(value * TEMPERATURE_LIMIT_SCALE) for value in (upper_c, lower_c)]
        error, max_raw, min_raw = self._transact(b"PwTA", struct.pack(">hh", *limits))
        if error:
            self.counters["device_errors"] += 1
            raise LensError(f"lens driver refused temperature limits {lower_c:g}..{upper_c:g} C "
                            f"(PwTA error {error})")
        return (raw_to_dpt(min_raw, self.firmware_offset_dpt), raw_to_dpt(max_raw, self.firmware_offset_dpt))

    # --- focal power, temperature, current --------------------------------------------------
    def set_focus(self, dpt: float) -> None:
        raw = dpt_to_raw(dpt, self.firmware_offset_dpt)
        self._transact(b"PwDA", struct.pack(">h", raw) + b"\x00\x00")

    def read_focus(self) -> float:
        """The focal-power set-point the driver holds (`PrDA`); the optics reach it a few ms later."""
        (raw,) = self._transact(b"PrDA", b"\x00" * 4)
        return raw_to_dpt(raw, self.firmware_offset_dpt)

    def temperature(self) -> float | None:
        (raw,) = self._transact(b"TCA")
        return raw * TEMPERATURE_SCALE_C

    def max_current_ma(self) -> float:
        """The driver's maximum output current (mA), also the scale of `set_current_ma`."""
        (raw,) = self._transact(b"CrMA", b"\x00\x00")
        self._max_current_ma = raw / 100.0
        return self._max_current_ma

    def set_current_ma(self, current_ma: float) -> None:
        """Drive a current (only meaningful in current mode, see `to_current_mode`)."""
        max_ma = self._max_current_ma or self.max_current_ma()
        if not (math.isfinite(current_ma) and abs(current_ma) <= max_ma):
            raise LensError(f"current {current_ma} mA is outside +-{max_ma:g} mA")
        self._transact(b"Aw", struct.pack(">h", round(current_ma / max_ma * CURRENT_FULL_SCALE)))

    def read_current_ma(self) -> float:
        """The current the driver outputs (`Ar`), in mA."""
        max_ma = self._max_current_ma or self.max_current_ma()
        (raw,) = self._transact(b"Ar", b"\x00\x00")
        return raw * max_ma / CURRENT_FULL_SCALE

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

    def _transact(self, command: bytes, args: bytes = b"") -> tuple:
        """Send one command; return the reply's fields (() for commands without a reply)."""
        frame_out = encode_command(command, args)
        layout = LAYOUTS[command]
        with self._lock:
            ser = self._io()
            self.counters["commands"] += 1
            # Stray bytes (a late reply, an error reply to an earlier set command) must not pass
            # as this command's reply.
            self._guarded(ser.reset_input_buffer)
            self._guarded(ser.write, frame_out)
            if not layout.has_reply:
                return ()
            frame = self._read_frame(ser, layout.reply_bytes, command.decode())
            try:
                return decode_reply(command, frame)
            except ReplyCrcError:
                self.counters["bad_crc"] += 1
                raise
            except LensError:
                self.counters["device_errors"] += 1
                raise

    def _read_frame(self, ser: serial.Serial, length: int, what: str) -> bytes:
        """Read one reply: `length` bytes, or an error frame, which has its own length."""
        deadline = time.monotonic() + self.timeout
        frame = bytearray()
        while True:
            is_error = frame[:1] == ERROR_MARK
            if (is_error and is_error_frame(frame)) or (not is_error and len(frame) >= length):
                return bytes(frame)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(frame) >= max(length, MAX_ERROR_FRAME):
                break
            ser.timeout = remaining
            # The first byte tells an error frame; its end is found byte by byte.
            chunk = self._guarded(ser.read, 1 if not frame or is_error else length - len(frame))
            if not chunk:
                break
            frame += chunk
        self.counters["no_reply"] += 1
        if not frame:
            raise LensError(f"no reply to {what} from {self.port} within {self.timeout * 1e3:.0f} ms")
        raise LensError(f"incomplete reply to {what} from {self.port}: {len(frame)} of {length} "
                        f"bytes within {self.timeout * 1e3:.0f} ms ({bytes(frame[:16]).hex(' ').upper()})")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, termios.error) and len(exc.args) == 2:
        return str(exc.args[1])
    return " ".join(str(exc).split()) or type(exc).__name__
