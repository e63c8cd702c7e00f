"""Image loading, resizing, masks and atomic saving."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from nst_deploy.errors import ImageError, MaskError
from nst_deploy.images import load_image, load_mask, save_image, target_size


def _as_hwc(t: torch.Tensor) -> np.ndarray:
    assert t.dim() == 4 and t.shape[:2] == (1, 3)
    return t[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("fmt,ext,exact", [
    ("PNG", "png", True), ("BMP", "bmp", True), ("TIFF", "tif", True),
    ("WEBP", "webp", False), ("JPEG", "jpg", False),
])
def test_allowed_formats_load_as_rgb_float(tmp_path, rgb_array, fmt, ext, exact):
    path = tmp_path / f"a.{ext}"
    Image.fromarray(rgb_array).save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    x = load_image(path)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 24, 32)
    got = _as_hwc(x) * 255
    tol = 0.01 if exact or fmt == "WEBP" else 12
    assert np.abs(got - rgb_array).max() <= tol


def test_refused_format_gif(tmp_path, rgb_array):
    path = tmp_path / "a.gif"
    Image.fromarray(rgb_array).save(path)
    with pytest.raises(ImageError, match="not a PNG, JPEG, WEBP, TIFF, BMP"):
        load_image(path)


def test_mode_1_and_L(tmp_path):
    arr = np.array([[0, 255], [128, 64]], dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    Image.fromarray(arr, "L").save(tmp_path / "l.png")
    Image.fromarray(arr > 100).convert("1").save(tmp_path / "b.png")
    grey = load_image(tmp_path / "l.png")
    assert torch.allclose(grey[0, 0], torch.from_numpy(arr / 255.0).float())
    assert torch.equal(grey[0, 0], grey[0, 2])
    bw = load_image(tmp_path / "b.png")
    assert set(bw.unique().tolist()) == {0.0, 1.0}


def test_rgba_composited_on_background(tmp_path):
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red
    arr[:, :8, 3] = 255  # left half opaque
    arr[:, 8:, 3] = 0  # right half transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    white = _as_hwc(load_image(tmp_path / "a.png"))
    assert np.allclose(white[:, :8], [1, 0, 0]) and np.allclose(white[:, 8:], [1, 1, 1])
    blue = _as_hwc(load_image(tmp_path / "a.png", background="#0000ff"))
    assert np.allclose(blue[:, 8:], [0, 0, 1])
    half = arr.copy()
    half[..., 3] = 128
    Image.fromarray(half, "RGBA").save(tmp_path / "h.png")
    mix = _as_hwc(load_image(tmp_path / "h.png", background=(0, 0, 0)))
    assert np.allclose(mix[0, 0], [128 / 255, 0, 0], atol=1e-6)


def test_la_and_palette_with_transparency(tmp_path):
    la = np.zeros((8, 8, 2), dtype=np.uint8)
    la[..., 0] = 0
    la[:, 4:, 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    x = _as_hwc(load_image(tmp_path / "la.png"))
    assert np.allclose(x[:, :4], 1.0) and np.allclose(x[:, 4:], 0.0)

    p = Image.new("P", (8, 8), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.paste(1, (0, 0, 4, 8))
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    y = _as_hwc(load_image(tmp_path / "p.png", background=(0, 0, 255)))
    assert np.allclose(y[:, :4], [0, 1, 0]) and np.allclose(y[:, 4:], [0, 0, 1])


def test_cmyk(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    x = _as_hwc(load_image(tmp_path / "c.jpg"))
    assert x[..., 0].mean() > 0.9 and x[..., 1:].mean() < 0.1  # pure red


def test_16_bit_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, 0)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    x = load_image(tmp_path / "g16.png")
    assert torch.allclose(x[0, 0, 0], torch.tensor([0, 257, 32768, 65535]) / 65535.0)
    assert len(x[0, 0, 0].unique()) == 4  # 16-bit precision kept (257 and 0 differ)


def test_mode_I_and_F(tmp_path):
    big = np.array([[-1000, 0, 100000]], dtype=np.int32).repeat(2, 0)
    Image.fromarray(big, "I").save(tmp_path / "i.tif")
    x = load_image(tmp_path / "i.tif")[0, 0, 0]
    assert torch.allclose(x, torch.tensor([0.0, 1000 / 101000, 1.0]))
    f = np.array([[0.0, 0.25, 1.0]], dtype=np.float32).repeat(2, 0)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    assert torch.allclose(load_image(tmp_path / "f.tif")[0, 0, 0], torch.tensor([0.0, 0.25, 1.0]))


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "o.jpg", exif=exif, quality=100)
    x = _as_hwc(load_image(tmp_path / "o.jpg"))
    assert x.shape[:2] == (40, 20)  # portrait once rotated
    assert x[:15].mean() > 0.9 and x[25:].mean() < 0.1  # the white half is now on top


def test_resize_longest_side_and_pixels(chelsea):
    x = load_image(chelsea, size=128)
    assert x.shape[-2:] == (85, 128)
    y = load_image(chelsea, pixels=10000)
    h, w = y.shape[-2:]
    assert abs(h * w - 10000) < 200 and abs(w / h - 451 / 300) < 0.03
    assert target_size(300, 451) == (300, 451)
    with pytest.raises(ImageError):
        load_image(chelsea, size=100, pixels=100)


def test_resize_is_antialiased(tmp_path):
    checker = ((np.indices((256, 256)).sum(0) % 2) * 255).astype(np.uint8)
    Image.fromarray(checker).save(tmp_path / "c.png")
    x = load_image(tmp_path / "c.png", size=32)
    assert abs(x.mean().item() - 0.5) < 0.01 and x.std().item() < 0.02  # no aliasing pattern


def test_decompression_bomb_refused_before_decoding(tmp_path):
    # A PNG that declares 40000x40000 pixels (1.6 G) with almost no data.
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(ImageError, match="40000x40000.*over the limit"):
        load_image(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="over the limit of 100"):
        load_image(tmp_path / "bomb.png", max_pixels=100)


def test_limit_is_configurable(png_file):
    with pytest.raises(ImageError, match="over the limit"):
        load_image(png_file, max_pixels=24 * 32 - 1)
    assert load_image(png_file, max_pixels=24 * 32).shape == (1, 3, 24, 32)


def test_limit_from_the_environment(png_file, monkeypatch):
    """NST_MAX_PIXELS sets the default limit (the CLI's way); an explicit max_pixels still wins."""
    monkeypatch.setenv("NST_MAX_PIXELS", str(24 * 32 - 1))
    with pytest.raises(ImageError, match="over the limit of 767 .*NST_MAX_PIXELS"):
        load_image(png_file)
    assert load_image(png_file, max_pixels=24 * 32).shape == (1, 3, 24, 32)
    monkeypatch.setenv("NST_MAX_PIXELS", "lots")
    with pytest.raises(ImageError, match="NST_MAX_PIXELS must be a positive number"):
        load_image(png_file)


def test_truncated_png(tmp_path, png_file):
    data = png_file.read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(tmp_path / "t.png")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "x.jpg").write_text("this is not an image\n")
    with pytest.raises(ImageError, match="not a PNG, JPEG"):
        load_image(tmp_path / "x.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")


def test_too_small_image_states_minimum(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    with pytest.raises(ImageError, match=r"1x1 pixels, too small.*at least 16x16"):
        load_image(tmp_path / "one.png", min_side=16)
    with pytest.raises(ImageError, match="resized to 32x8"):
        Image.new("RGB", (400, 100)).save(tmp_path / "wide.png")
        load_image(tmp_path / "wide.png", size=32, min_side=16)


# --------------------------------------------------------------------------------------------- masks
def test_mask_grey_resized(tmp_path):
    arr = np.zeros((60, 80), dtype=np.uint8)
    arr[:, 40:] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png", (30, 40))
    assert m.shape == (1, 1, 30, 40) and m.min() >= 0 and m.max() <= 1
    assert m[..., :19].max() == 0 and m[..., 21:].min() == 1


def test_mask_alpha_counts_as_zero(tmp_path):
    arr = np.full((10, 10, 4), 255, dtype=np.uint8)
    arr[:5, :, 3] = 0
    Image.fromarray(arr, "RGBA").save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png")
    assert m[0, 0, :5].max() == 0 and m[0, 0, 5:].min() == 1


def test_mask_of_wrong_aspect_refused(tmp_path):
    Image.new("L", (300, 200), 255).save(tmp_path / "m.png")
    with pytest.raises(MaskError, match="300x200 but its target is 256x256"):
        load_mask(tmp_path / "m.png", (256, 256))


def test_mask_unreadable(tmp_path):
    (tmp_path / "m.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(MaskError, match="cannot read mask"):
        load_mask(tmp_path / "m.png", (8, 8))


# --------------------------------------------------------------------------------------------- saving
def test_png8_round_trip_exact(tmp_path):
    x = torch.randint(0, 256, (1, 3, 9, 13)).float() / 255
    save_image(x, tmp_path / "o.png")
    assert torch.allclose(load_image(tmp_path / "o.png"), x, atol=1e-7)


def _read_png16(path):
    data = path.read_bytes()
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(tag + body)
        if tag == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype = ihdr[:4]
    c = 3 if ctype == 2 else 1
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + w * c * 2)
    assert depth == 16 and (rows[:, 0] == 0).all()
    return rows[:, 1:].copy().view(">u2").reshape(h, w, c)


def test_png16_rgb_and_grey(tmp_path):
    x = torch.rand(3, 7, 11, dtype=torch.float64).float()
    save_image(x, tmp_path / "o.png", bits=16)
    px = _read_png16(tmp_path / "o.png")
    assert np.array_equal(px, np.rint(x.permute(1, 2, 0).numpy() * 65535).astype(np.uint16))
    g = torch.rand(1, 5, 6)
    save_image(g, tmp_path / "g.png", bits=16)
    back = load_image(tmp_path / "g.png")[0, 0]  # Pillow reads 16-bit grey
    assert torch.allclose(back, g[0], atol=1 / 65535)


def test_jpeg_and_tiff(tmp_path, chelsea):
    x = load_image(chelsea, size=64)
    for name in ("o.jpg", "o.jpeg", "o.tif", "o.tiff"):
        save_image(x, tmp_path / name)
        y = load_image(tmp_path / name)
        assert y.shape == x.shape and (y - x).abs().mean() < 0.03


@pytest.mark.parametrize("bad,match", [
    (torch.full((1, 3, 4, 4), float("nan")), "NaN"),
    (torch.zeros(2, 3, 4, 4), "batch of 2"),
    (torch.zeros(4, 4), "shape"),
])
def test_bad_tensor_writes_nothing(tmp_path, bad, match):
    with pytest.raises(ImageError, match=match):
        save_image(bad, tmp_path / "o.png")
    assert list(tmp_path.iterdir()) == []


def test_bad_destination(tmp_path):
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ImageError, match="unknown extension"):
        save_image(x, tmp_path / "o.gif")
    with pytest.raises(ImageError, match="does not exist"):
        save_image(x, tmp_path / "missing" / "o.png")
    with pytest.raises(ImageError, match="PNG only"):
        save_image(x, tmp_path / "o.jpg", bits=16)
    assert list(tmp_path.iterdir()) == []


def test_crash_during_save_keeps_old_file(tmp_path, monkeypatch):
    out = tmp_path / "o.png"
    save_image(torch.zeros(1, 3, 4, 4), out)
    before = out.read_bytes()

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(ImageError, match="No space left"):
        save_image(torch.ones(1, 3, 4, 4), out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]  # no temporary file left behind


def test_crash_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "new.png"
    real_fsync = os.fsync

    def dies(fd):
        real_fsync(fd)
        raise KeyboardInterrupt  # e.g. the process being stopped while writing

    monkeypatch.setattr(os, "fsync", dies)
    with pytest.raises(KeyboardInterrupt):
        save_image(torch.ones(1, 3, 4, 4), out)
    assert list(tmp_path.iterdir()) == []


def test_float_image_with_nan_refused(tmp_path):
    f = np.array([[0.0, np.nan], [1.0, 0.5]], dtype=np.float32)
    Image.fromarray(f, "F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageError, match="NaN"):
        load_image(tmp_path / "nan.tif")
    with pytest.raises(MaskError, match="cannot read mask .*NaN"):
        load_mask(tmp_path / "nan.tif")


def test_saved_files_get_normal_permissions(tmp_path):
    import os

    from nst_deploy.images import save_image

    old = os.umask(0o022)
    try:
        path = save_image(torch.rand(1, 3, 8, 8), tmp_path / "a.png")
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        os.chmod(path, 0o640)
        save_image(torch.rand(1, 3, 8, 8), path)
        assert path.stat().st_mode & 0o777 == 0o640  # an existing file keeps its permissions
    finally:
        os.umask(old)
