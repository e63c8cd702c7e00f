"""Shared fixtures: small images made on the fly, the bundled sample images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Without a GPU the Triton kernels run in Triton's interpreter (read when a kernel is defined, so
# before any kernel module is imported).
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

DATA = Path(__file__).resolve().parents[1] / "nst_deploy" / "data"


@pytest.fixture
def rgb_array() -> np.ndarray:
    """A 24x32 RGB uint8 gradient with distinct channels."""
    y, x = np.mgrid[0:24, 0:32]
    return np.stack([x * 8, y * 10, (x + y) * 4], axis=-1).astype(np.uint8)


@pytest.fixture
def png_file(tmp_path, rgb_array) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray(rgb_array, "RGB").save(path)
    return path


@pytest.fixture
def chelsea() -> Path:
    return DATA / "chelsea.jpg"


@pytest.fixture(scope="module")
def style(tmp_path_factory) -> Path:
    """A small copy of the bundled Starry Night (64x51): the style image of the training tests."""
    p = tmp_path_factory.mktemp("style") / "starry.png"
    Image.open(DATA / "starry_night.jpg").convert("RGB").resize((64, 51)).save(p)
    return p
