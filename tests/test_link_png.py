"""The link's PNG codec: lossless, readable by any decoder, reads any PNG, refuses damaged ones."""

import struct
import zlib

import cv2
import numpy as np
import pytest

from robot_node import png

SHAPES = [(1, 1, 3), (1, 5, 3), (3, 1, 3), (7, 9, 3), (64, 64, 3), (100, 37, 3)]


def camera_like(shape, seed=0):
    h, w, _ = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    smooth = np.stack([200 * x / w, 150 * y / h, 100 + 50 * np.sin(x / 5)], -1)
    return np.clip(smooth + np.random.default_rng(seed).normal(0, 2, smooth.shape), 0, 255).astype(np.uint8)


def noise(shape, seed=1):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with(idat_chunks: list[bytes], shape=(8, 8, 3), ihdr=None) -> bytes:
    h, w, _ = shape
    ihdr = ihdr or struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return png.SIGNATURE + chunk(b"IHDR", ihdr) + b"".join(chunk(b"IDAT", c) for c in idat_chunks) + chunk(b"IEND", b"")


def opencv_png(rgb, *params) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))[1].tobytes()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("make", [camera_like, noise])
def test_images_round_trip_exactly_and_other_decoders_read_them(shape, make):
    rgb = make(shape)
    data = png.encode_rgb(rgb)
    decoded = png.decode_rgb(data, shape)
    np.testing.assert_array_equal(decoded, rgb)
    assert decoded.dtype == np.uint8 and decoded.flags.writeable
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), rgb)


def test_camera_frames_are_compressed():
    rgb = camera_like((64, 64, 3))
    assert len(png.encode_rgb(rgb)) < 0.7 * rgb.nbytes


@pytest.mark.parametrize("png_filter", [
    None,  # OpenCV's default: the best filter per row
    cv2.IMWRITE_PNG_FILTER_NONE, cv2.IMWRITE_PNG_FILTER_SUB, cv2.IMWRITE_PNG_FILTER_UP,
    cv2.IMWRITE_PNG_FILTER_AVG, cv2.IMWRITE_PNG_FILTER_PAETH,
])
def test_pngs_from_another_encoder_decode_the_same(png_filter):
    rgb = camera_like((48, 40, 3), seed=png_filter or 0)
    data = opencv_png(rgb) if png_filter is None else opencv_png(rgb, cv2.IMWRITE_PNG_FILTER, png_filter)
    np.testing.assert_array_equal(png.decode_rgb(data, rgb.shape), rgb)


def test_image_data_split_over_several_chunks_is_joined():
    rgb = camera_like((16, 16, 3))
    ours = png.encode_rgb(rgb)
    (length,) = struct.unpack(">I", ours[33:37])  # the IDAT after the 8-byte signature and 25-byte IHDR chunk
    idat = ours[41 : 41 + length]
    np.testing.assert_array_equal(png.decode_rgb(png_with([idat[:5], idat[5:20], idat[20:]], rgb.shape), rgb.shape), rgb)


def filtered_rows(rows: int, row_bytes: int, fill: int = 0) -> bytes:
    return (b"\x00" + bytes([fill]) * row_bytes) * rows


def test_a_hand_made_png_decodes():  # the refusals below are made the same way, each with one fault
    data = png_with([zlib.compress(filtered_rows(8, 24, fill=7))])
    np.testing.assert_array_equal(png.decode_rgb(data, (8, 8, 3)), np.full((8, 8, 3), 7, np.uint8))


@pytest.mark.parametrize("data, reason", [
    (b"GIF89a" + bytes(40), "bad_image"),  # not a PNG
    (png.encode_rgb(noise((8, 8, 3)))[:-12], "bad_image"),  # no IEND
    (png.encode_rgb(noise((16, 8, 3))), "image_size"),  # another size than the spec's
    (png_with([zlib.compress(filtered_rows(8, 24))[:-6]]), "bad_image"),  # the compressed stream cut short
    (png_with([b"not deflate at all"]), "bad_image"),
    (png_with([zlib.compress(filtered_rows(7, 24))]), "bad_image"),  # a row too few
    (png_with([zlib.compress(filtered_rows(9, 24))]), "bad_image"),  # a row too many
    (png_with([zlib.compress(filtered_rows(8, 24)) + b"extra"]), "bad_image"),  # bytes after the stream
    (png_with([zlib.compress(filtered_rows(8, 24))[:-4] + b"\0\0\0\0"]), "bad_image"),  # wrong Adler-32
    (png_with([zlib.compress((b"\x05" + bytes(24)) * 8)]), "bad_image"),  # filter type 5 does not exist
])
def test_damaged_pngs_are_refused_with_a_reason(data, reason):
    with pytest.raises(png.PngError) as info:
        png.decode_rgb(data, (8, 8, 3))
    assert info.value.reason == reason


def test_a_chunk_whose_crc_does_not_match_is_refused():
    data = bytearray(png.encode_rgb(noise((8, 8, 3))))
    data[45] ^= 0xFF  # a byte of the compressed image data
    with pytest.raises(png.PngError, match="CRC"):
        png.decode_rgb(bytes(data), (8, 8, 3))


def test_image_data_that_inflates_beyond_the_image_is_refused_without_inflating_it():
    bomb = zlib.compress(bytes(200 << 20), 9)  # 200 MB of zeros in about 200 kB
    with pytest.raises(png.PngError) as info:
        png.decode_rgb(png_with([bomb], (64, 64, 3)), (64, 64, 3))
    assert info.value.reason == "bad_image"
