"""Lens drivers against the Optotune Lens Driver 4 emulator on a real pseudo-terminal (no DDS)."""
import math
import os
import struct
import time

import pytest
import serial
from hypothesis import given
from hypothesis import strategies as st
from progress import STALL_S

from efs_ros.lens import LensError, OptotuneLens, SimLens, crc16_arc
from efs_ros.lens.emulator import ERR_BAD_CRC, MODE_CURRENT, MODE_FOCAL_POWER, LensDriverEmulator
from efs_ros.lens.optotune import check_reply, dpt_to_raw, encode_reply, raw_to_dpt, with_crc

TIMEOUT_S = 0.05


def bitwise_crc16_arc(data: bytes) -> int:
    """Reference: the textbook shift register, MSB-first on the unreflected poly 0x8005 with
    reflected input/output (a different algorithm from the driver's reflected table)."""
    crc = 0
    for byte in data:
        byte = int(f"{byte:08b}"[::-1], 2)
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return int(f"{crc:016b}"[::-1], 2)


@pytest.fixture
def emulator(tmp_path):
    with LensDriverEmulator(tmp_path / "lens0", firmware_offset_dpt=5.0, temperature_c=27.3125,
                            time_constant_s=0.003) as emu:
        yield emu


@pytest.fixture
def lens(emulator):
    driver = OptotuneLens(str(emulator.path), timeout=TIMEOUT_S, firmware_offset_dpt=5.0)
    driver.connect()
    yield driver
    driver.close()


def settle(lens, target, tol=0.006, deadline_s=STALL_S):
    """Read until the lens reports `target` (the emulated lens lags the command by a few ms;
    the deadline is only a hang detector: the caller checks the value)."""
    end = time.monotonic() + deadline_s
    value = lens.read_focus()
    while abs(value - target) > tol and time.monotonic() < end:
        time.sleep(0.005)
        value = lens.read_focus()
    return value


# --- protocol ---------------------------------------------------------------------------------
def test_crc16_arc_known_vectors():
    assert crc16_arc(b"123456789") == 0xBB3D  # the CRC catalogue's check value for CRC-16/ARC
    assert crc16_arc(b"") == 0
    assert with_crc(b"123456789") == b"123456789\x3d\xbb"  # little endian on the wire


@given(st.binary(max_size=64))
def test_crc16_arc_matches_bitwise_reference(data):
    assert crc16_arc(data) == bitwise_crc16_arc(data)


def test_check_reply_rejects_bad_frames():
    good = encode_reply(b"PDA" + struct.pack(">h", 1600))
    assert check_reply(good, b"PDA", 2, "PrDA") == struct.pack(">h", 1600)
    corrupted = good[:3] + bytes([good[3] ^ 1]) + good[4:]
    with pytest.raises(LensError, match="bad CRC"):
        check_reply(corrupted, b"PDA", 2, "PrDA")
    with pytest.raises(LensError, match="no CR LF"):
        check_reply(good[:-2] + b"xx", b"PDA", 2, "PrDA")
    with pytest.raises(LensError, match="error 45 03"):
        check_reply(encode_reply(b"E\x03"), b"PDA", 2, "PrDA")
    with pytest.raises(LensError, match="unexpected reply"):
        check_reply(encode_reply(b"TCA\x01\x02"), b"PDA", 2, "PrDA")


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
def test_handshake_sets_focal_power_mode(emulator, lens):
    assert lens.is_connected
    assert emulator.counters["handshakes"] == 1
    assert emulator.mode == MODE_FOCAL_POWER
    assert lens.focal_power_range_dpt == pytest.approx(emulator.range_dpt)


def test_set_and_read_focal_power_with_offset(emulator, lens):
    lens.set_focus(3.0)
    assert settle(lens, 3.0) == pytest.approx(3.0, abs=0.006)  # PwDA has no reply: settle first
    assert emulator.last_raw_set == (3.0 + 5.0) * 200  # the bytes on the wire use the offset
    assert emulator.focus_dpt == pytest.approx(3.0, abs=0.006)
    lens.set_focus(-1.25)
    assert settle(lens, -1.25) == pytest.approx(-1.25, abs=0.006)


def test_wrong_firmware_offset_shows_up_as_a_shift(emulator):
    """A driver configured for the other firmware commands the lens 5 dpt off."""
    with OptotuneLens(str(emulator.path), timeout=TIMEOUT_S, firmware_offset_dpt=0.0) as lens:
        lens.set_focus(8.0)  # raw 1600, which this emulated firmware reads as 8 - 5 = 3 dpt
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


def test_emulator_answers_bad_command_crc_with_error_frame(emulator):
    with serial.Serial(str(emulator.path), 115200, timeout=1.0) as port:
        port.write(b"TCA\x00\x00")
        reply = port.read(6)
    assert reply == encode_reply(bytes([ord("E"), ERR_BAD_CRC]))
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
