"""Decode stage for pushed images: content-type check, header-only pixel cap, decoding as `vad evaluate`."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from model.data import read_image
from service.decode import check_content_type, decode_image, probe_size, to_bgr
from service.domain import ImageTooLarge, InvalidImage, UnsupportedMediaType

CAP = 1_000_000


def encode(ext: str, frame: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, frame)
    assert ok
    return data.tobytes()


def pil_bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height (8-bit gray), followed by an IDAT of garbage."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"\x00" * 8)
            + png_chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 64x48 JPEG whose SOF0 header is patched to declare width x height."""
    data = bytearray(encode(".jpg", np.full((48, 64, 3), 120, np.uint8)))
    sof = data.index(b"\xff\xc0")
    assert struct.unpack(">HH", data[sof + 5:sof + 9]) == (48, 64)  # (height, width) in a SOF segment
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def bgr() -> np.ndarray:
    """A 30x20 BGR frame with distinct values per channel and position (lossless in PNG)."""
    y, x = np.mgrid[0:20, 0:30]
    return np.stack([x * 8, y * 12, (x + y) * 5], axis=2).astype(np.uint8)


# --- content type -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["image/jpeg", "image/jpg", "image/png", "application/octet-stream", "IMAGE/PNG", " image/jpeg ; q=1"],
)
def test_accepted_content_types(content_type: str) -> None:
    check_content_type(content_type)  # does not raise


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        (None, "'none'"),
        ("", "'none'"),
        ("image/gif", "'image/gif'"),
        ("text/plain; charset=utf-8", "'text/plain'"),
        ("multipart/form-data; boundary=x", "'multipart/form-data'"),
    ],
)
def test_refused_content_types_name_the_media_type(content_type: str | None, shown: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=f"Content-Type {shown} is not supported"):
        check_content_type(content_type)


# --- decoding -----------------------------------------------------------------------------------


def test_png_bgr_decodes_exactly(bgr: np.ndarray) -> None:
    frame = decode_image(encode(".png", bgr), CAP)
    assert frame.dtype == np.uint8
    assert frame.shape == (20, 30, 3)
    np.testing.assert_array_equal(frame, bgr)


def test_jpeg_decodes_to_bgr_of_the_header_size() -> None:
    # A flat colour survives JPEG almost exactly; checks both the size and the BGR channel order.
    source = np.empty((48, 64, 3), np.uint8)
    source[:] = (30, 120, 220)
    frame = decode_image(encode(".jpg", source), CAP)
    assert frame.dtype == np.uint8
    assert frame.shape == (48, 64, 3)
    assert np.abs(frame.astype(int) - source.astype(int)).max() <= 3


def test_grayscale_png_decodes_to_two_dimensions() -> None:
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    frame = decode_image(encode(".png", gray), CAP)
    assert frame.shape == (12, 16)
    np.testing.assert_array_equal(frame, gray)


def test_bgra_png_keeps_its_alpha_channel(bgr: np.ndarray) -> None:
    alpha = np.full((20, 30, 1), 77, np.uint8)
    bgra = np.concatenate([bgr, alpha], axis=2)
    frame = decode_image(encode(".png", bgra), CAP)
    assert frame.shape == (20, 30, 4)
    np.testing.assert_array_equal(frame, bgra)


def test_sixteen_bit_png_is_min_max_normalised_to_uint8() -> None:
    deep = np.array([[0, 1000, 2000], [500, 1500, 2000]], np.uint16)
    frame = decode_image(encode(".png", deep), CAP)
    assert frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, [[0, 128, 255], [64, 191, 255]])


def test_decoding_matches_model_read_image_on_the_same_file(tmp_path: Path, bgr: np.ndarray) -> None:
    """A pushed frame must score as the same file read by `vad evaluate` (model.data.read_image)."""
    bgra = np.concatenate([bgr, np.full((20, 30, 1), 200, np.uint8)], axis=2)
    deep = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 37
    cases = {"frame.png": encode(".png", bgr), "gray.png": encode(".png", bgr[:, :, 0]),
             "bgra.png": encode(".png", bgra), "deep.png": encode(".png", deep),
             "frame.jpg": encode(".jpg", bgr)}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        decoded = decode_image(data, CAP)
        from_disk = read_image(path)
        assert decoded.shape == from_disk.shape, name
        np.testing.assert_array_equal(decoded, from_disk, err_msg=name)


# --- refusals -----------------------------------------------------------------------------------


def test_empty_body_is_invalid() -> None:
    with pytest.raises(InvalidImage, match="empty body"):
        decode_image(b"", CAP)


@pytest.mark.parametrize(
    "data", [b"not an image at all", bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"],
    ids=["text", "noise", "png-signature-only", "jpeg-soi-only"],
)
def test_bytes_that_are_no_image_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage, match="not a JPEG or PNG file"):
        decode_image(data, CAP)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "WEBP"])
def test_other_image_formats_are_refused(fmt: str) -> None:
    data = pil_bytes(Image.new("RGB", (8, 6), (1, 2, 3)), fmt)
    with pytest.raises(InvalidImage, match=f"image format {fmt} is not supported"):
        decode_image(data, CAP)


def test_a_valid_png_header_followed_by_corrupt_data_is_invalid() -> None:
    with pytest.raises(InvalidImage, match="the 40x30 header is followed by corrupt data"):
        decode_image(png_declaring(40, 30), CAP)


def test_a_multi_picture_jpeg_is_decoded_like_any_jpeg() -> None:
    image = Image.new("RGB", (8, 6), (200, 100, 50))
    data = pil_bytes(image, "MPO", save_all=True, append_images=[image])
    assert data[:3] == b"\xff\xd8\xff"  # a JPEG stream; PIL reports its format as "MPO"
    frame = decode_image(data, CAP)
    assert frame.shape == (6, 8, 3)


# --- pixel cap ----------------------------------------------------------------------------------


def test_pixel_cap_is_inclusive() -> None:
    assert probe_size(png_declaring(1000, 1000), 1_000_000) == (1000, 1000)
    with pytest.raises(ImageTooLarge, match=r"1001x1000 = 1001000 pixels, above the limit of 1000000"):
        probe_size(png_declaring(1001, 1000), 1_000_000)


@pytest.mark.parametrize("make", [png_declaring, jpeg_declaring], ids=["png", "jpeg"])
def test_pixel_cap_is_checked_from_the_header_before_decoding(
    make: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make(5000, 4000)  # type: ignore[operator]
    assert len(data) < 1000  # the file is tiny; only its header claims 20 Mpx
    calls: list[int] = []
    real_imdecode = cv2.imdecode

    def counting_imdecode(buf: np.ndarray, flags: int) -> np.ndarray | None:
        calls.append(len(buf))
        return real_imdecode(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", counting_imdecode)
    with pytest.raises(ImageTooLarge, match=r"5000x4000 = 20000000 pixels, above the limit of 1000000"):
        decode_image(data, CAP)
    assert calls == []  # refused from the header: no pixel was decoded
    assert probe_size(data, 10**8) == (5000, 4000)
    decode_image(encode(".png", np.zeros((4, 4), np.uint8)), CAP)
    assert len(calls) == 1  # the patch is live: a small image does reach the decoder


def test_a_header_beyond_pils_own_bomb_limit_is_too_large_not_invalid() -> None:
    with pytest.raises(ImageTooLarge, match="the limit is 1000000"):
        decode_image(png_declaring(20000, 20000), CAP)  # 400 Mpx: PIL itself refuses to open it


def test_the_pixel_cap_setting_stays_below_pils_own_bomb_limit() -> None:
    """Above 2 * Image.MAX_IMAGE_PIXELS PIL refuses a header by itself, so a larger cap could not be
    honoured: the setting refuses it at start-up instead."""
    from service.settings import LimitSettings, Settings, SettingsError

    assert LimitSettings.model_fields["max_pixels"].metadata[-1].le <= 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(SettingsError, match="--max-pixels='250000000': Input should be less than or equal to"):
        Settings.from_flat(max_pixels=250_000_000)


def test_decode_refuses_a_frame_above_the_cap(bgr: np.ndarray) -> None:
    data = encode(".png", bgr)  # 30x20 = 600 pixels
    assert decode_image(data, 600).shape == (20, 30, 3)
    with pytest.raises(ImageTooLarge):
        decode_image(data, 599)


# --- to_bgr -------------------------------------------------------------------------------------


def test_to_bgr_expands_gray_to_three_equal_channels() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for shaped in (gray, gray[:, :, None]):
        out = to_bgr(shaped)
        assert out.shape == (3, 4, 3) and out.dtype == np.uint8
        for ch in range(3):
            np.testing.assert_array_equal(out[:, :, ch], gray)


def test_to_bgr_drops_alpha_and_returns_a_contiguous_array(bgr: np.ndarray) -> None:
    bgra = np.concatenate([bgr, np.full((20, 30, 1), 9, np.uint8)], axis=2)
    out = to_bgr(bgra)
    assert out.shape == (20, 30, 3)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, bgr)


def test_to_bgr_leaves_bgr_unchanged(bgr: np.ndarray) -> None:
    assert to_bgr(bgr) is bgr
