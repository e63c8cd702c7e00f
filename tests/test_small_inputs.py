"""Inputs people pass: a path to the Stylizer, and style images too small for the style layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_deploy.errors import LossNetError, NSTError
from nst_deploy.nets.io import bundled_models
from nst_deploy.optimize import stylize
from nst_deploy.runtime import Stylizer
from nst_deploy.synth import synth
from nst_deploy.train import TrainOptions, train

from .conftest import DATA


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.png"
    Image.new("RGB", (7, 5), (200, 30, 30)).save(path)
    return path


def test_stylizer_takes_a_path_and_returns_a_pil_image(tmp_path):
    s = Stylizer.load(bundled_models()["johnson__starry_night"], device="cpu")
    photo = Image.open(DATA / "chelsea.jpg").convert("RGB").resize((96, 64))
    photo.save(tmp_path / "photo.png")
    want = s(np.asarray(photo))
    for given in (tmp_path / "photo.png", str(tmp_path / "photo.png")):
        got = s(given)
        assert isinstance(got, Image.Image) and got.size == (96, 64)
        assert np.array_equal(np.asarray(got), want)
    with pytest.raises(NSTError, match="no such file"):
        s(tmp_path / "missing.png")
    with pytest.raises(NSTError, match="expected an image path, PIL image"):
        s(3)


def test_a_style_image_too_small_for_the_style_layers_is_refused(tiny):
    content = DATA / "chelsea.jpg"
    with pytest.raises(LossNetError, match=r"the style image is 7x5 pixels; vgg19's layers up to conv5_1 need at "
                                           r"least 16x16"):
        stylize(content, tiny, size=48, steps=1)
    with pytest.raises(LossNetError, match="the style image 2 is 7x5 pixels"):
        stylize(content, [DATA / "starry_night.jpg", tiny], size=48, steps=1, multi_style="blend")
    # layers that a 7x5 image reaches (conv2_1 needs 2 pixels): accepted, the image is upscaled as before
    out = stylize(content, tiny, size=48, steps=1, style_layers="conv1_1,conv2_1", as_tensor=True)
    assert torch.isfinite(out).all()


def test_synth_and_train_refuse_it_too(tiny, tmp_path):
    with pytest.raises(LossNetError, match="the style image is 7x5 pixels"):
        synth("texture", style=tiny, size=48, steps=1)
    with pytest.raises(LossNetError, match="the painting image is 7x5 pixels"):
        synth("mimic", painting=tiny, size=48, steps=1)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(DATA / "chelsea.jpg").convert("RGB").resize((64, 48)).save(photos / "a.png")
    with pytest.raises(LossNetError, match="the style image is 7x5 pixels; vgg19's layers up to relu4_3"):
        train(TrainOptions(style=str(tiny), data=str(photos), steps=1, size=32, batch=1), tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()
