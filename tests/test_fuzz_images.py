"""Whatever the bytes, loading an image raises only the project's own error type."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from nst_deploy.errors import ImageError, MaskError
from nst_deploy.images import load_image, load_mask

from .conftest import DATA


def _seeds() -> list[bytes]:
    """Small real images in every allowed format and several modes."""
    base = Image.open(DATA / "chelsea.jpg").convert("RGB").resize((24, 16))
    seeds = []
    for fmt, mode, opts in [
        ("PNG", "RGB", {}), ("PNG", "RGBA", {}), ("PNG", "P", {}), ("PNG", "I;16", {}),
        ("JPEG", "RGB", {"quality": 80}), ("JPEG", "CMYK", {}), ("WEBP", "RGB", {}),
        ("TIFF", "RGB", {}), ("TIFF", "F", {}), ("BMP", "RGB", {}), ("BMP", "L", {}),
    ]:
        img = base.convert("L").convert(mode) if mode in ("I;16", "F") else base.convert(mode)
        buf = io.BytesIO()
        img.save(buf, format=fmt, **opts)
        seeds.append(buf.getvalue())
    return seeds


SEEDS = _seeds()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "splice"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 32))]
        else:  # a chunk of another real image, e.g. a header grafted onto other data
            other = draw(st.sampled_from(SEEDS))
            j = draw(st.integers(0, len(other) - 1))
            data[i:i + 8] = other[j:j + 8]
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mutated())
def test_mutated_images_raise_only_image_error(tmp_path, data):
    path = tmp_path / "fuzz.img"
    path.write_bytes(data)
    try:
        x = load_image(path, max_pixels=1_000_000)
    except ImageError:
        return
    assert x.dim() == 4 and x.shape[1] == 3
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(mutated(), st.binary(max_size=256)))
def test_mutated_masks_raise_only_mask_error(tmp_path, data):
    path = tmp_path / "fuzz.png"
    path.write_bytes(data)
    try:
        m = load_mask(path, max_pixels=1_000_000)
    except MaskError:
        return
    assert m.dim() == 4 and m.shape[1] == 1 and torch.isfinite(m).all()


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_unmutated_seeds_load(tmp_path, seed):
    path = tmp_path / "seed.img"
    path.write_bytes(SEEDS[seed])
    assert load_image(path).shape == (1, 3, 16, 24)
