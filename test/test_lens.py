"""Lens drivers: golden frames from the public byte table, and the Optotune Lens Driver 4 driver
against its emulator on a real pseudo-terminal (no DDS).

The golden frames below are written by hand from the shared REFERENCE.md ("Optotune Lens
Driver 4"), with CRCs from this file's own CRC function, so driver and emulator are each held
to the table and cannot drift together.
"""
import math
import os
import select
import struct
import threading
import time
import tty
from contextlib import contextmanager

import pytest
import serial
from hypothesis import given
from hypothesis import strategies as st
from progress import STALL_S

from efs_ros.lens import LensError, OptotuneLens, SimLens, crc16_arc
from efs_ros.lens.emulator import ERR_BAD_CRC, MODE_CURRENT, MODE_FOCAL_POWER, LensDriverEmulator
from efs_ros.lens.optotune import decode_reply, dpt_to_raw, raw_to_dpt, with_crc

TIMEOUT_S = 0.05


def bitwise_crc16_arc(data: bytes) -> int:
    """Reference: the textbook shift register, MSB-first on the unreflected poly 0x8005 with
    reflected input/output (a different algorithm from the driver's and the emulator's)."""
    crc = 0
    for byte in data:
        byte = int(f"{byte:08b}"[::-1], 2)
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return int(f"{crc:016b}"[::-1], 2)


def reply(payload: bytes) -> bytes:
    """A reply frame as the table has it: payload, CRC-16/ARC little endian, CR LF."""
    return payload + struct.pack("<H", bitwise_crc16_arc(payload)) + b"\r\n"


# --- golden frames, by hand from the table ------------------------------------------------------
# Commands: name, big-endian arguments, CRC-16/ARC little endian (literal; checked below).
CMD_H = b"H\x00\x36"
CMD_V = b"V\x00" + b"\x3f\xa0"
CMD_X = b"X\x01\xfa"
CMD_CRMA = b"CrMA\x00\x00" + b"\x71\x80"
CMD_TCA = b"TCA\xb0\xd0"
CMD_PWTA_20_40 = b"PwTA\x02\x80\x01\x40" + b"\x33\xd0"    # upper 40 C x 16 = 640, lower 20 C x 16 = 320
CMD_MWCA = b"MwCA\x56\x76"
CMD_MWDA = b"MwDA\x54\x46"
CMD_MMA = b"MMA\x65\x77"
CMD_PWDA_1600 = b"PwDA\x06\x40\x00\x00" + b"\x30\x2c"    # 3 dpt, type A: (3 + 5) x 200 = 1600
CMD_PWDA_600 = b"PwDA\x02\x58\x00\x00" + b"\xb1\x1b"     # 3 dpt, other types: 3 x 200 = 600
CMD_PRDA = b"PrDA\x00\x00\x00\x00" + b"\x64\x70"
CMD_AW_2048 = b"Aw\x08\x00" + b"\xa3\xe6"
CMD_AR = b"Ar\x00\x00" + b"\xb4\x27"
GOLDEN_COMMANDS = [CMD_H, CMD_V, CMD_X, CMD_CRMA, CMD_TCA, CMD_PWTA_20_40, CMD_MWCA, CMD_MWDA, CMD_MMA,
                   CMD_PWDA_1600, CMD_PWDA_600, CMD_PRDA, CMD_AW_2048, CMD_AR]

# Replies: prefix bytes (the emulator echoes the command's letters; the driver skips them), fields.
REPLY_H_A = reply(b"H" + b"A")
REPLY_H_B = reply(b"H" + b"B")
REPLY_V = reply(b"V" + b"\x03\x0b" + b"\x04\x00" + b"\x00\x00")         # 3.11, build 1024, patch 0
REPLY_X = reply(b"X" + b"EL123456")
REPLY_CRMA = reply(b"CMA" + b"\x72\x64")                                # 29284 -> 292.84 mA
REPLY_TCA = reply(b"TCA" + b"\x01\xb5")                                 # 437 x 0.0625 = 27.3125 C
REPLY_MWCA_A = reply(b"MCA" + b"\x00" + b"\x0f\xa0" + b"\x00\x00")       # MAX 4000, MIN 0: 15, -5 dpt
REPLY_MWCA_B = reply(b"MCA" + b"\x00" + b"\x0b\xb8" + b"\xfc\x18")       # MAX 3000, MIN -1000: 15, -5
REPLY_PWTA_A = reply(b"PT" + b"\x00" + b"\x0f\xa0" + b"\x00\x00")        # MAX 15, MIN -5 dpt (type A)
REPLY_PWTA_B_NARROW = reply(b"PT" + b"\x00" + b"\x0b\xb8" + b"\x00\xc8")  # MAX 3000, MIN 200: 15, 1 dpt
REPLY_MWDA = reply(b"MDA")
REPLY_MMA_CURRENT = reply(b"MMA" + b"\x01")
REPLY_MMA_FOCAL_POWER = reply(b"MMA" + b"\x05")
REPLY_PRDA_1600 = reply(b"PD" + b"\x06\x40")
REPLY_PRDA_600 = reply(b"PD" + b"\x02\x58")
REPLY_PRDA_MINUS_250 = reply(b"PD" + b"\xff\x06")                       # -1.25 dpt on other types
REPLY_AR_2048 = reply(b"A" + b"\x08\x00")
ERROR_BAD_CRC = reply(b"E\x01")
ERROR_REJECTED = reply(b"E\x03")


def test_golden_commands_carry_their_crc():
    for frame in GOLDEN_COMMANDS:
        assert frame[-2:] == struct.pack("<H", bitwise_crc16_arc(frame[:-2])), frame


class ScriptedDevice:
    """A pty that answers exact hand-written commands with exact hand-written replies and
    records, in order, every command it got; anything unscripted is recorded and not answered."""

    def __init__(self, script: dict[bytes, bytes]):
        self.script = dict(script)
        self.received: list[bytes] = []
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        pending = b""
        while not self._stop.is_set():
            if not select.select([self._master], [], [], 0.01)[0]:
                continue
            try:
                pending += os.read(self._master, 4096)
            except OSError:
                return
            while pending:
                command = next((c for c in self.script if pending.startswith(c)), None)
                if command is None:
                    if not any(c.startswith(pending) for c in self.script):
                        self.received.append(pending)  # unscripted: the test sees it
                        pending = b""
                    break
                pending = pending[len(command):]
                self.received.append(command)
                os.write(self._master, self.script[command])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        os.close(self._master)
        os.close(self._slave)


@contextmanager
def scripted_lens(script: dict[bytes, bytes], **kwargs):
    device = ScriptedDevice({b"Start": b"Ready\r\n", **script})
    lens = OptotuneLens(device.path, timeout=kwargs.pop("timeout", 0.5), **kwargs)
    try:
        yield device, lens
    finally:
        lens.close()
        device.close()


# --- the driver against hand-written frames ---------------------------------------------------
def test_driver_type_a_frames():
    script = {CMD_H: REPLY_H_A, CMD_MWCA: REPLY_MWCA_A, CMD_PWDA_1600: b"", CMD_PRDA: REPLY_PRDA_1600,
              CMD_TCA: REPLY_TCA}
    with scripted_lens(script) as (device, lens):
        lens.connect()
        assert device.received == [b"Start", CMD_H, CMD_MWCA]
        assert lens.firmware_type == "A" and lens.firmware_offset_dpt == 5.0
        assert lens.focal_power_range_dpt == (-5.0, 15.0)  # MAX came first on the wire
        lens.set_focus(3.0)
        assert lens.read_focus() == 3.0  # raw 1600 - 5 dpt offset
        assert lens.temperature() == 27.3125
        assert device.received[3:] == [CMD_PWDA_1600, CMD_PRDA, CMD_TCA]


def test_driver_other_firmware_frames():
    script = {CMD_H: REPLY_H_B, CMD_MWCA: REPLY_MWCA_B, CMD_PWDA_600: b"", CMD_PRDA: REPLY_PRDA_600}
    with scripted_lens(script) as (device, lens):
        lens.connect()
        assert lens.firmware_type == "B" and lens.firmware_offset_dpt == 0.0
        assert lens.focal_power_range_dpt == (-5.0, 15.0)
        lens.set_focus(3.0)
        assert lens.read_focus() == 3.0  # raw 600, no offset
        device.script[CMD_PRDA] = REPLY_PRDA_MINUS_250
        assert lens.read_focus() == -1.25
        assert device.received == [b"Start", CMD_H, CMD_MWCA, CMD_PWDA_600, CMD_PRDA, CMD_PRDA]


def test_driver_focal_power_range_is_max_first():
    """An asymmetric range: swapping MAX and MIN would give (15, 1) or shift it."""
    script = {CMD_H: REPLY_H_B, CMD_MWCA: REPLY_MWCA_B, CMD_PWTA_20_40: REPLY_PWTA_B_NARROW}
    with scripted_lens(script, temperature_limits_c=(20.0, 40.0)) as (device, lens):
        lens.connect()
        assert device.received == [b"Start", CMD_H, CMD_MWCA, CMD_PWTA_20_40]
        assert lens.focal_power_range_dpt == (1.0, 15.0)  # what the temperature limits allow
        assert lens.set_temperature_limits(20, 40) == (1.0, 15.0)


def test_driver_identity_mode_and_current_frames():
    script = {CMD_H: REPLY_H_A, CMD_MWCA: REPLY_MWCA_A, CMD_V: REPLY_V, CMD_X: REPLY_X,
              CMD_MMA: REPLY_MMA_CURRENT, CMD_MWDA: REPLY_MWDA, CMD_CRMA: REPLY_CRMA, CMD_AW_2048: b"",
              CMD_AR: REPLY_AR_2048}
    with scripted_lens(script) as (device, lens):
        lens.connect()
        assert lens.firmware_version() == (3, 11, 1024, 0)
        assert lens.serial_number() == "EL123456"
        lens.to_current_mode()
        assert lens.mode() == 1
        assert lens.max_current_ma() == pytest.approx(292.84)
        lens.set_current_ma(2048 * 292.84 / 4095)
        assert lens.read_current_ma() == pytest.approx(2048 * 292.84 / 4095)
        assert device.received[3:] == [CMD_V, CMD_X, CMD_MWDA, CMD_MMA, CMD_CRMA, CMD_AW_2048, CMD_AR]


def test_driver_drains_an_unsolicited_error_reply():
    """A set command is not answered on success; an error reply to one arrives unasked and must
    not pass for the reply of the next command."""
    script = {CMD_H: REPLY_H_A, CMD_MWCA: REPLY_MWCA_A, CMD_PWDA_1600: ERROR_BAD_CRC,
              CMD_PRDA: REPLY_PRDA_1600}
    with scripted_lens(script) as (device, lens):
        lens.connect()
        lens.set_focus(3.0)
        time.sleep(0.05)  # the stray error frame is in the input buffer by now
        assert lens.read_focus() == 3.0
        assert lens.counters["device_errors"] == 0


def test_driver_reports_an_error_reply_in_place_of_a_reply():
    script = {CMD_H: REPLY_H_A, CMD_MWCA: REPLY_MWCA_A, CMD_TCA: ERROR_REJECTED, CMD_PRDA: REPLY_PRDA_1600}
    with scripted_lens(script) as (device, lens):
        lens.connect()
        with pytest.raises(LensError, match="answered TCA with error 45 03"):
            lens.temperature()
        assert lens.counters["device_errors"] == 1 and lens.is_connected
        assert lens.read_focus() == 3.0


def test_explicit_offset_overrides_the_firmware_type():
    script = {CMD_H: REPLY_H_A, CMD_MWCA: REPLY_MWCA_A, CMD_PWDA_600: b""}
    with scripted_lens(script, firmware_offset_dpt=0.0) as (device, lens):
        lens.connect()
        assert lens.firmware_type == "A" and lens.firmware_offset_dpt == 0.0
        assert lens.focal_power_range_dpt == (0.0, 20.0)  # raw 0..4000 read without the offset
        lens.set_focus(3.0)
        time.sleep(0.05)
        assert device.received[-1] == CMD_PWDA_600


def test_decode_reply_skips_prefix_and_frames_by_length():
    assert decode_reply(b"PrDA", reply(b"??" + b"\x02\x58")) == (600,)  # prefix bytes are not checked
    assert decode_reply(b"PrDA", reply(b"PD" + b"\r\n")) == (0x0D0A,)     # CR LF inside the data
    assert decode_reply(b"MwCA", REPLY_MWCA_B) == (0, 3000, -1000)
    assert decode_reply(b"H", REPLY_H_A) == (b"A",)
    corrupted = REPLY_PRDA_600[:3] + bytes([REPLY_PRDA_600[3] ^ 1]) + REPLY_PRDA_600[4:]
    with pytest.raises(LensError, match="bad CRC"):
        decode_reply(b"PrDA", corrupted)
    with pytest.raises(LensError, match="no CR LF"):
        decode_reply(b"PrDA", REPLY_PRDA_600[:-2] + b"xx")
    with pytest.raises(LensError, match="error 45 03"):
        decode_reply(b"PrDA", ERROR_REJECTED)
    with pytest.raises(LensError, match="expected 8"):
        decode_reply(b"PrDA", REPLY_TCA)


# --- the emulator against hand-written frames -------------------------------------------------
def exchange(port: serial.Serial, command: bytes, reply_bytes: int) -> bytes:
    port.write(command)
    return port.read(reply_bytes)


def test_emulator_type_a_golden_replies(tmp_path):
    with LensDriverEmulator(tmp_path / "lens0", firmware_type="A", temperature_c=27.3125,
                            max_current_ma=292.84, serial_number="EL123456",
                            firmware_version=(3, 11, 1024, 0)) as emulator, \
            serial.Serial(str(emulator.path), 115200, timeout=1.0) as port:
        assert exchange(port, b"Start", 7) == b"Ready\r\n"
        expected = [(CMD_H, REPLY_H_A), (CMD_V, REPLY_V), (CMD_X, REPLY_X), (CMD_CRMA, REPLY_CRMA),
                    (CMD_TCA, REPLY_TCA), (CMD_MMA, REPLY_MMA_CURRENT), (CMD_MWCA, REPLY_MWCA_A),
                    (CMD_MMA, REPLY_MMA_FOCAL_POWER), (CMD_PWDA_1600, b""), (CMD_PRDA, REPLY_PRDA_1600),
                    (CMD_PWTA_20_40, REPLY_PWTA_A), (CMD_MWDA, REPLY_MWDA), (CMD_AW_2048, b""),
                    (CMD_AR, REPLY_AR_2048)]
        for command, golden in expected:
            assert exchange(port, command, len(golden)) == golden, command
        # a bad CRC gets an error reply, set command or not
        assert exchange(port, b"TCA\x00\x00", len(ERROR_BAD_CRC)) == ERROR_BAD_CRC
        assert exchange(port, CMD_PWDA_600[:-2] + b"\x00\x00", len(ERROR_BAD_CRC)) == ERROR_BAD_CRC
        port.timeout = 0.1
        assert port.read(64) == b""  # and nothing else came
        assert list(emulator.received)[-2:] == [b"TCA\x00\x00", CMD_PWDA_600[:-2] + b"\x00\x00"]
        assert emulator.temperature_limits_c == (20.0, 40.0)


def test_emulator_other_firmware_golden_replies(tmp_path):
    with LensDriverEmulator(tmp_path / "lens0", firmware_type="B") as emulator, \
            serial.Serial(str(emulator.path), 115200, timeout=1.0) as port:
        assert exchange(port, b"Start", 7) == b"Ready\r\n"
        for command, golden in [(CMD_H, REPLY_H_B), (CMD_MWCA, REPLY_MWCA_B), (CMD_PWDA_600, b""),
                                (CMD_PRDA, REPLY_PRDA_600)]:
            assert exchange(port, command, len(golden)) == golden, command
        assert emulator.last_raw_set == 600 and emulator.target_dpt == 3.0


# --- protocol helpers -------------------------------------------------------------------------
def test_crc16_arc_known_vectors():
    assert crc16_arc(b"123456789") == 0xBB3D  # the CRC catalogue's check value for CRC-16/ARC
    assert bitwise_crc16_arc(b"123456789") == 0xBB3D
    assert crc16_arc(b"") == 0
    assert with_crc(b"123456789") == b"123456789\x3d\xbb"  # little endian on the wire


@given(st.binary(max_size=64))
def test_crc16_arc_matches_bitwise_reference(data):
    assert crc16_arc(data) == bitwise_crc16_arc(data)


def test_focal_power_encoding_and_offset():
    assert dpt_to_raw(3.0) == 600
    assert dpt_to_raw(3.0, offset_dpt=5.0) == 1600
    assert dpt_to_raw(-2.5) == -500
    assert raw_to_dpt(1600, offset_dpt=5.0) == 3.0
    with pytest.raises(LensError, match="int16"):
        dpt_to_raw(200.0)
    with pytest.raises(LensError, match="finite"):
        dpt_to_raw(math.nan)


# --- driver against the emulator --------------------------------------------------------------
@pytest.fixture
def emulator(tmp_path):
    with LensDriverEmulator(tmp_path / "lens0", firmware_type="A", temperature_c=27.3125,
                            time_constant_s=0.003) as emu:
        yield emu


@pytest.fixture
def lens(emulator):
    driver = OptotuneLens(str(emulator.path), timeout=TIMEOUT_S)  # offset from the firmware type
    driver.connect()
    yield driver
    driver.close()


def settle(lens, target, tol=0.006, deadline_s=STALL_S):
    """Read until the lens reports `target` (the deadline is only a hang detector: the caller
    checks the value)."""
    end = time.monotonic() + deadline_s
    value = lens.read_focus()
    while abs(value - target) > tol and time.monotonic() < end:
        time.sleep(0.005)
        value = lens.read_focus()
    return value


def test_handshake_sets_focal_power_mode(emulator, lens):
    assert lens.is_connected
    assert emulator.counters["handshakes"] == 1
    assert emulator.mode == MODE_FOCAL_POWER
    assert lens.firmware_type == "A" and lens.firmware_offset_dpt == 5.0
    assert lens.focal_power_range_dpt == pytest.approx(emulator.range_dpt)


def test_set_and_read_focal_power_with_offset(emulator, lens):
    lens.set_focus(3.0)
    assert settle(lens, 3.0) == pytest.approx(3.0, abs=0.006)  # PwDA has no reply: read it back
    assert emulator.last_raw_set == (3.0 + 5.0) * 200  # the bytes on the wire use the offset
    assert emulator.target_dpt == pytest.approx(3.0)
    lens.set_focus(-1.25)
    assert settle(lens, -1.25) == pytest.approx(-1.25, abs=0.006)
    time.sleep(0.05)  # the optics follow the set-point within a few time constants
    assert emulator.focus_dpt == pytest.approx(-1.25, abs=0.006)


def test_wrong_firmware_offset_shows_up_as_a_shift(emulator):
    """A driver told the wrong offset for this firmware commands the lens 5 dpt off."""
    with OptotuneLens(str(emulator.path), timeout=TIMEOUT_S, firmware_offset_dpt=0.0) as lens:
        lens.set_focus(8.0)  # raw 1600, which this emulated type-A firmware reads as 8 - 5 = 3 dpt
        settle(lens, 8.0)
        assert emulator.target_dpt == pytest.approx(3.0)


def test_reply_framed_by_length_even_with_crlf_inside(emulator, lens):
    raw = 0x0D0A  # the reply's data bytes are exactly "\r\n"
    target = raw_to_dpt(raw, 5.0)
    lens.set_focus(target)
    assert settle(lens, target, tol=1e-9) == pytest.approx(target, abs=1e-9)


def test_temperature_and_max_current(emulator, lens):
    assert lens.temperature() == pytest.approx(27.3125)
    assert lens.max_current_ma() == pytest.approx(emulator.max_current_ma)


def test_no_reply_raises_after_timeout(emulator, lens):
    emulator.silent = True
    start = time.monotonic()
    with pytest.raises(LensError, match="no reply to PrDA"):
        lens.read_focus()
    elapsed = time.monotonic() - start
    assert elapsed >= TIMEOUT_S * 0.9  # waited for the timeout (returning at all: no hang)
    assert lens.counters["no_reply"] == 1
    emulator.silent = False
    assert math.isfinite(lens.read_focus())  # a late/missing reply does not poison the next one


def test_bad_reply_crc_detected(emulator, lens):
    emulator.corrupt_crc = True
    with pytest.raises(LensError, match="bad CRC in reply to TCA"):
        lens.temperature()
    assert lens.counters["bad_crc"] == 1
    emulator.corrupt_crc = False
    assert lens.temperature() == pytest.approx(27.3125)


def test_error_reply_is_reported(emulator, lens):
    emulator.reject = True
    with pytest.raises(LensError, match="answered PrDA with error 45 03"):
        lens.read_focus()
    assert lens.counters["device_errors"] == 1
    assert lens.is_connected
    emulator.reject = False
    assert math.isfinite(lens.read_focus())


def test_emulator_answers_bad_command_crc_with_error_frame(emulator):
    with serial.Serial(str(emulator.path), 115200, timeout=1.0) as port:
        port.write(b"TCA\x00\x00")
        got = port.read(6)
    assert got == reply(bytes([ord("E"), ERR_BAD_CRC]))
    assert emulator.counters["bad_crc"] == 1


def test_unplug_then_replug_reconnects(emulator, lens):
    lens.set_focus(2.0)
    settle(lens, 2.0)
    emulator.unplug()
    assert not os.path.lexists(emulator.path)
    with pytest.raises(LensError, match="disconnected"):
        lens.read_focus()
    assert not lens.is_connected
    with pytest.raises(LensError, match="cannot open lens port"):
        lens.reconnect()
    emulator.replug()
    assert emulator.mode == MODE_CURRENT  # a power-cycled driver forgets its mode ...
    lens.reconnect()
    assert emulator.mode == MODE_FOCAL_POWER  # ... and reconnect() sets it again
    lens.set_focus(4.0)
    assert settle(lens, 4.0) == pytest.approx(4.0, abs=0.006)
    assert emulator.counters["replugs"] == 1


def test_open_missing_port_is_one_line_error(tmp_path):
    lens = OptotuneLens(str(tmp_path / "nothing"), timeout=TIMEOUT_S)
    with pytest.raises(LensError, match="No such file") as info:
        lens.connect()
    assert "\n" not in str(info.value)
    assert not lens.is_connected


# --- simulated lens ---------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_sim_lens_first_order_lag():
    clock = FakeClock()
    lens = SimLens(time_constant_s=0.01, noise_mdpt=0.0, initial_dpt=1.0, clock=clock)
    lens.connect()
    lens.set_focus(6.0)
    readings = []
    for _ in range(50):
        clock.t += 0.001
        readings.append(lens.read_focus())
    expected = [6.0 - 5.0 * math.exp(-(k + 1) * 0.001 / 0.01) for k in range(50)]
    assert readings == pytest.approx(expected, abs=1e-9)
    assert readings[9] == pytest.approx(6.0 - 5.0 / math.e)  # one time constant: 63 % of the step
    clock.t += 1.0
    assert lens.read_focus() == pytest.approx(6.0, abs=1e-9)


def test_sim_lens_noise_and_connection():
    clock = FakeClock()
    lens = SimLens(time_constant_s=0.0, noise_mdpt=3.0, initial_dpt=2.0, clock=clock, seed=1)
    with pytest.raises(LensError, match="not connected"):
        lens.read_focus()
    lens.connect()
    samples = [lens.read_focus() for _ in range(4000)]
    mean = sum(samples) / len(samples)
    std = math.sqrt(sum((s - mean) ** 2 for s in samples) / len(samples))
    assert mean == pytest.approx(2.0, abs=0.0005)
    assert std == pytest.approx(0.003, rel=0.1)
    assert lens.temperature() is not None
    with pytest.raises(LensError, match="finite"):
        lens.set_focus(math.inf)
