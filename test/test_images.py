"""Camera frames as drivers send them: 8/16-bit, Bayer, transfer curves, and malformed input."""
import numpy as np
import pytest

from efs_ros.core.images import (
    BAYER_ENCODINGS,
    CAMERA_ENCODINGS,
    FRAME_ENCODINGS,
    ImageError,
    Transfer,
    array_to_image,
    bayer_mosaic,
    decode_frame,
    encode_frame,
    from_linear,
    image_to_array,
    output_encoding,
    parse_transfer,
    to_linear,
)

PLAIN = ("rgb8", "bgr8", "mono8", "rgb16", "bgr16", "mono16")
TRANSFERS = ("linear", "srgb", "gamma:2.2")


def srgb_decode_ref(v):
    """IEC 61966-2-1 in float64, written out independently of the module."""
    v = np.asarray(v, dtype=np.float64)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def srgb_encode_ref(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def random_levels(encoding, shape=(5, 7), seed=0):
    rng = np.random.default_rng(seed)
    full = 65535 if "16" in encoding else 255
    dims = shape if encoding.startswith("mono") else (*shape, 3)
    levels = rng.integers(0, full + 1, dims)
    levels.flat[:2] = (0, full)  # the ends of the range always appear
    return levels.astype(np.uint16 if full == 65535 else np.uint8)


# ------------------------------------------------------------------ transfer strings

@pytest.mark.parametrize("text, name, gamma", [
    ("linear", "linear", 1.0), ("srgb", "srgb", 1.0), ("gamma:2.2", "gamma", 2.2),
    ("gamma:1", "gamma", 1.0), ("gamma:.5", "gamma", 0.5), ("gamma:1.8e0", "gamma", 1.8),
])
def test_parse_transfer_accepts_the_contract_syntax(text, name, gamma):
    curve = parse_transfer(text)
    assert (curve.name, curve.gamma) == (name, gamma)
    assert parse_transfer(str(curve)) == curve
    assert parse_transfer(curve) is curve


@pytest.mark.parametrize("text", [
    "gamma:0", "gamma:x", "log", "gamma:-1", "gamma:", "gamma", "gamma:nan", "gamma:inf",
    "gamma:1e999", "gamma:2_2", "gamma: 2.2", "Linear", "sRGB", "", None, 2.2,
])
def test_bad_transfer_strings_raise_one_line_value_errors(text):
    with pytest.raises(ValueError, match="unknown frame transfer") as info:
        parse_transfer(text)
    assert "\n" not in str(info.value) and "gamma:<g>" in str(info.value)
    with pytest.raises(ValueError, match="unknown frame transfer"):
        decode_frame(1, 1, "mono8", 1, b"\x80", transfer=text)
    with pytest.raises(ValueError, match="unknown frame transfer"):
        encode_frame(np.zeros((1, 1), np.float32), "mono8", transfer=text)


def test_srgb_curve_known_values_and_joints():
    srgb = parse_transfer("srgb")
    # 0.5 linear is about 0.7354 in sRGB, and back
    assert float(srgb.from_linear(np.float32(0.5))) == pytest.approx(0.735357, abs=2e-6)
    assert float(srgb.to_linear(np.float32(0.735357))) == pytest.approx(0.5, abs=2e-6)
    # the joints: the linear and the power segments meet (to 1e-6) at 0.0031308 <-> 0.04045
    for x in (0.0031308 - 1e-7, 0.0031308, 0.0031308 + 1e-7):
        assert float(srgb.from_linear(np.float32(x))) == pytest.approx(0.04045, abs=1e-5)
    for v in (0.04045 - 1e-6, 0.04045, 0.04045 + 1e-6):
        assert float(srgb.to_linear(np.float32(v))) == pytest.approx(0.0031308, abs=1e-6)
    # below the joint it is exactly the linear segment, above the power law
    assert float(srgb.from_linear(np.float32(0.001))) == pytest.approx(0.01292, rel=1e-6)
    assert float(srgb.to_linear(np.float32(0.02))) == pytest.approx(0.02 / 12.92, rel=1e-6)
    assert float(srgb.to_linear(np.float32(0.2))) == pytest.approx(0.0331048, rel=1e-5)
    grid = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(srgb.from_linear(grid), srgb_encode_ref(grid), atol=1e-6)
    np.testing.assert_allclose(srgb.to_linear(grid), srgb_decode_ref(grid), atol=1e-6)
    assert srgb.to_linear(grid).dtype == np.float32
    # out-of-range inputs are clipped, never NaN
    np.testing.assert_allclose(srgb.from_linear(np.array([-1.0, 2.0])), [0.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(srgb.to_linear(np.array([-1.0, 2.0])), [0.0, 1.0])


def test_gamma_curve_follows_the_contract_direction():
    # CONTRACT: frame value = irradiance ** (1 / g)
    g22 = parse_transfer("gamma:2.2")
    assert float(g22.from_linear(np.float32(0.5))) == pytest.approx(0.5 ** (1 / 2.2), rel=1e-6)
    assert float(g22.to_linear(np.float32(0.5))) == pytest.approx(0.5 ** 2.2, rel=1e-6)
    assert from_linear(np.full((1, 1), 0.5), "mono8", transfer="gamma:2.2")[0, 0] == 186
    assert decode_frame(1, 1, "mono8", 1, bytes([186]), transfer="gamma:2.2")[0, 0] == \
        pytest.approx((186 / 255) ** 2.2, rel=1e-6)


def test_transfers_on_frames_known_levels():
    half = np.full((1, 1), 0.5, np.float32)
    assert from_linear(half, "mono8")[0, 0] == 128
    assert from_linear(half, "mono8", transfer="srgb")[0, 0] == 188  # 0.73536 * 255 = 187.5
    assert from_linear(half, "mono16", transfer="srgb")[0, 0] == round(0.7353569830524495 * 65535)
    level = decode_frame(1, 1, "mono16", 2, np.uint16(48192).tobytes(), transfer="srgb")[0, 0]
    assert level == pytest.approx(0.5, abs=2e-5)
    # the joint level of an 8-bit sRGB frame: 10/255 = 0.0392 is on the linear segment
    assert decode_frame(1, 1, "mono8", 1, bytes([10]), transfer="srgb")[0, 0] == \
        pytest.approx(10 / 255 / 12.92, rel=1e-6)


# ------------------------------------------------------------------ 8- and 16-bit round trips

@pytest.mark.parametrize("transfer", TRANSFERS)
@pytest.mark.parametrize("encoding", PLAIN)
@pytest.mark.parametrize("big", [False, True])
def test_every_plain_encoding_round_trips_its_levels(encoding, transfer, big):
    levels = random_levels(encoding)
    fields = array_to_image(levels, encoding, is_bigendian=big)
    assert fields.is_bigendian == big
    frame = decode_frame(fields.width, fields.height, encoding, fields.step, fields.data, big,
                         transfer=transfer)
    assert frame.dtype == np.float32 and frame.shape[:2] == (5, 7)
    rgb_levels = levels[..., ::-1] if encoding.startswith("bgr") else levels
    full = 65535.0 if "16" in encoding else 255.0
    value = rgb_levels / full
    expect = {"linear": value, "srgb": srgb_decode_ref(value), "gamma:2.2": value ** 2.2}[transfer]
    np.testing.assert_allclose(frame, expect, atol=2e-6)
    back = encode_frame(frame, encoding, transfer=transfer, is_bigendian=big)
    assert (back.encoding, back.width, back.height, back.step) == (encoding, 7, 5, fields.step)
    assert back.data == fields.data  # every level survives decode -> encode exactly


@pytest.mark.parametrize("encoding", ["mono16", "rgb16", "bgr16"])
def test_16_bit_byte_order_follows_is_bigendian(encoding):
    channels = 1 if encoding == "mono16" else 3
    raw = bytes([0x01, 0x02, 0xFF, 0x00] * channels)  # two pixels, each channel alike
    shape = (1, 2) if channels == 1 else (1, 2, 3)
    big = image_to_array(2, 1, encoding, 4 * channels, raw, is_bigendian=True)
    little = image_to_array(2, 1, encoding, 4 * channels, raw, is_bigendian=False)
    assert big.dtype == little.dtype == np.uint16 and big.shape == shape
    np.testing.assert_array_equal(big.reshape(-1), [0x0102, 0xFF00] * channels)
    np.testing.assert_array_equal(little.reshape(-1), [0x0201, 0x00FF] * channels)
    frame = decode_frame(2, 1, encoding, 4 * channels, raw, True)
    np.testing.assert_allclose(frame.reshape(-1)[:: channels], [0x0102 / 65535, 0xFF00 / 65535],
                               rtol=1e-6)
    assert encode_frame(frame, encoding, is_bigendian=True).data == raw


def test_16_bit_padded_rows_and_channel_order():
    pixels = np.array([[[1000, 2000, 3000], [4000, 5000, 60000]]], np.uint16)
    padded = np.zeros(16, np.uint8)
    padded[:12] = np.frombuffer(pixels.astype("<u2").tobytes(), np.uint8)
    np.testing.assert_array_equal(image_to_array(2, 1, "rgb16", 16, padded.tobytes()), pixels)
    rgb = decode_frame(2, 1, "rgb16", 16, padded.tobytes())
    bgr = decode_frame(2, 1, "bgr16", 16, padded.tobytes())
    np.testing.assert_allclose(rgb[0, 1], [4000 / 65535, 5000 / 65535, 60000 / 65535], rtol=1e-6)
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    raw = image_to_array(2, 1, "bgr16", 12, encode_frame(rgb, "bgr16").data)
    np.testing.assert_array_equal(raw[0, 1], [60000, 5000, 4000])  # blue first on the wire


def test_16_bit_outputs_clip_and_drop_nan():
    frame = np.array([[np.nan, -1.0, 0.5, 2.0, np.inf]], np.float32)
    np.testing.assert_array_equal(from_linear(frame, "mono16"), [[0, 0, 32768, 65535, 65535]])
    assert from_linear(frame, "mono16").dtype == np.uint16


# ------------------------------------------------------------------ Bayer

def smooth_rgb(height=16, width=20):
    """Linear RGB with a distinct colour per channel and gentle gradients (no edges)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([0.80 - 0.01 * xx, 0.45 + 0.01 * yy, 0.12 + 0.005 * (xx + yy)], axis=2)


def mosaic_by_hand(rgb, pattern):
    """The test's own mosaic: pattern = the top-left 2x2 filters, row by row (ROS naming)."""
    out = np.zeros(rgb.shape[:2], rgb.dtype)
    where = {(0, 0): pattern[0], (0, 1): pattern[1], (1, 0): pattern[2], (1, 1): pattern[3]}
    for (dy, dx), letter in where.items():
        out[dy::2, dx::2] = rgb[dy::2, dx::2, {"r": 0, "g": 1, "b": 2}[letter]]
    return out


@pytest.mark.parametrize("encoding, pattern", [
    ("bayer_rggb8", "rggb"), ("bayer_bggr8", "bggr"), ("bayer_gbrg8", "gbrg"), ("bayer_grbg8", "grbg"),
])
@pytest.mark.parametrize("transfer", TRANSFERS)
def test_bayer_demosaic_gives_the_colour_back(encoding, pattern, transfer):
    truth = smooth_rgb()
    curve = parse_transfer(transfer)
    levels = np.rint(curve.from_linear(truth) * 255).astype(np.uint8)
    mosaic = mosaic_by_hand(levels, pattern)
    np.testing.assert_array_equal(bayer_mosaic(levels, encoding), mosaic)
    h, w = mosaic.shape
    frame = decode_frame(w, h, encoding, w, mosaic.tobytes(), transfer=transfer)
    assert frame.shape == (h, w, 3) and frame.dtype == np.float32
    # interpolation in linear light is exact on linear gradients away from the border; what is
    # left is half an 8-bit step, which a transfer curve stretches up to ~2.3x in linear terms
    atol = 0.5 / 255 * (1.0 if transfer == "linear" else 2.3) + 1e-4
    np.testing.assert_allclose(frame[2:-2, 2:-2], truth[2:-2, 2:-2], atol=atol)
    np.testing.assert_allclose(frame.mean(axis=(0, 1)), truth.mean(axis=(0, 1)), atol=0.01)
    # a mix-up of patterns would swap or blend channels by far more than that
    assert (frame[..., 0] - frame[..., 2]).min() > 0.3 and (frame[..., 1] - frame[..., 2]).min() > 0.2


@pytest.mark.parametrize("encoding", BAYER_ENCODINGS)
def test_bayer_flat_colour_is_flat_everywhere_and_outputs_rgb8(encoding):
    levels = np.empty((6, 9, 3), np.uint8)
    levels[...] = (200, 90, 30)
    mosaic = bayer_mosaic(levels, encoding)
    frame = to_linear(mosaic, encoding)
    np.testing.assert_allclose(frame, np.broadcast_to([200 / 255, 90 / 255, 30 / 255], frame.shape),
                               atol=1e-6)
    assert output_encoding(encoding) == "rgb8"
    fields = encode_frame(frame, encoding)
    assert fields.encoding == "rgb8" and fields.step == 9 * 3
    assert fields.data == encode_frame(frame, "rgb8").data
    np.testing.assert_array_equal(from_linear(frame, encoding), levels)


def test_bayer_mosaic_layout_by_hand():
    rgb = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)  # pixel (y, x) channel c
    r, g, b = (rgb[..., c] for c in range(3))
    np.testing.assert_array_equal(bayer_mosaic(rgb, "bayer_rggb8"), [[r[0, 0], g[0, 1]], [g[1, 0], b[1, 1]]])
    np.testing.assert_array_equal(bayer_mosaic(rgb, "bayer_bggr8"), [[b[0, 0], g[0, 1]], [g[1, 0], r[1, 1]]])
    np.testing.assert_array_equal(bayer_mosaic(rgb, "bayer_gbrg8"), [[g[0, 0], b[0, 1]], [r[1, 0], g[1, 1]]])
    np.testing.assert_array_equal(bayer_mosaic(rgb, "bayer_grbg8"), [[g[0, 0], r[0, 1]], [b[1, 0], g[1, 1]]])
    with pytest.raises(ImageError, match="not a Bayer encoding"):
        bayer_mosaic(rgb, "rgb8")


def test_bayer_odd_sizes_and_a_single_pixel_decode():
    mosaic = np.full((3, 5), 77, np.uint8)
    assert decode_frame(5, 3, "bayer_grbg8", 5, mosaic.tobytes()).shape == (3, 5, 3)
    assert decode_frame(1, 1, "bayer_rggb8", 1, b"\x10").shape == (1, 1, 3)


# ------------------------------------------------------------------ encodings and malformed input

def test_output_encoding_and_the_encoding_lists():
    for encoding in PLAIN:
        assert output_encoding(encoding) == encoding
    assert set(CAMERA_ENCODINGS) == set(PLAIN) | set(BAYER_ENCODINGS)
    assert FRAME_ENCODINGS == ("rgb8", "bgr8", "mono8")  # unchanged for its callers
    with pytest.raises(ImageError, match="unknown frame encoding '32FC1'.*bayer_rggb8"):
        output_encoding("32FC1")


@pytest.mark.parametrize("args, match", [
    ((3, 4, "mono16", 5, b"\0" * 20), "step 5 is shorter than a row of 3 mono16 pixels \\(6 bytes\\)"),
    ((3, 4, "rgb16", 18, b"\0" * 71), "71 bytes, expected height 4 x step 18 = 72"),
    ((3, 4, "bayer_bggr8", 2, b"\0" * 8), "step 2 is shorter than a row of 3 bayer_bggr8"),
])
def test_malformed_images_raise_one_line_errors(args, match):
    for convert in (image_to_array, decode_frame):
        with pytest.raises(ImageError, match=match) as info:
            convert(*args)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("encoding", ["bayer_xyzw8", "yuv422", "16UC1"])
def test_unknown_encodings_name_the_known_ones(encoding):
    with pytest.raises(ImageError, match=f"unknown image encoding '{encoding}' .*mono16.*bayer_grbg8.*32FC1"):
        image_to_array(3, 4, encoding, 3, b"\0" * 12)
    with pytest.raises(ImageError, match=f"unknown frame encoding '{encoding}' .*mono16.*bayer_grbg8\\)"):
        decode_frame(3, 4, encoding, 3, b"\0" * 12)


def test_arrays_of_the_wrong_kind_for_their_encoding():
    with pytest.raises(ImageError, match="mono16 frame must be uint16, got uint8"):
        to_linear(np.zeros((2, 2), np.uint8), "mono16")
    with pytest.raises(ImageError, match="bayer_rggb8 frame must be uint8, got uint16"):
        to_linear(np.zeros((2, 2), np.uint16), "bayer_rggb8")
    with pytest.raises(ImageError, match="does not fit encoding bayer_rggb8"):
        to_linear(np.zeros((2, 2, 3), np.uint8), "bayer_rggb8")
    with pytest.raises(ImageError, match="does not fit encoding rgb8"):  # Bayer outputs are RGB
        from_linear(np.zeros((2, 2), np.float32), "bayer_rggb8")
    with pytest.raises(ImageError, match="does not fit encoding rgb16"):
        encode_frame(np.zeros((2, 2), np.float32), "rgb16")
    with pytest.raises(ImageError, match="dtype uint8 does not fit encoding mono16"):
        array_to_image(np.zeros((2, 2), np.uint8), "mono16")
    with pytest.raises(ImageError, match="unknown frame encoding '32FC1'"):
        to_linear(np.zeros((2, 2), np.float32), "32FC1")


# ------------------------------------------------------------------ 8-bit behaviour as before

@pytest.mark.parametrize("encoding", FRAME_ENCODINGS)
def test_8_bit_defaults_match_the_original_formulas(encoding):
    levels = random_levels(encoding, shape=(9, 11), seed=3)
    old_in = levels.astype(np.float32) * np.float32(1.0 / 255.0)
    if encoding == "bgr8":
        old_in = old_in[:, :, ::-1]
    new_in = to_linear(levels, encoding)
    assert new_in.dtype == np.float32 and new_in.flags.c_contiguous
    np.testing.assert_array_equal(new_in, old_in)
    fields = array_to_image(levels, encoding)
    assert fields.is_bigendian is False and fields.step == levels[0].size
    np.testing.assert_array_equal(decode_frame(11, 9, encoding, fields.step, fields.data), old_in)
    rng = np.random.default_rng(4)
    frame = rng.uniform(-0.2, 1.2, new_in.shape).astype(np.float32)
    frame.flat[0] = np.nan
    old_out = np.rint(np.clip(np.nan_to_num(frame, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    if encoding == "bgr8":
        old_out = old_out[:, :, ::-1]
    new_out = from_linear(frame, encoding)
    assert new_out.dtype == np.uint8
    np.testing.assert_array_equal(new_out, old_out)
    np.testing.assert_array_equal(from_linear(frame, encoding, transfer="linear"), old_out)
    encoded = encode_frame(frame, encoding)
    assert (encoded.encoding, encoded.is_bigendian, encoded.data) == (encoding, False, old_out.tobytes())


def test_transfer_object_is_accepted_where_strings_are():
    levels = random_levels("rgb8", seed=5)
    curve = Transfer("gamma", 2.2)
    np.testing.assert_array_equal(to_linear(levels, "rgb8", transfer=curve),
                                  to_linear(levels, "rgb8", transfer="gamma:2.2"))
