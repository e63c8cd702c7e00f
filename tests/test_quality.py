"""The quality measures: Lab against known values, the sliced Wasserstein distance, the judge's ratios."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nst_deploy.images import load_image
from nst_deploy.nets.io import bundled_models
from nst_deploy.quality import Judge, border_ratio, lab, sliced_wasserstein
from nst_deploy.runtime import Stylizer

from .conftest import DATA


def test_lab_of_known_colours():
    got = lab(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(got[0], [100.0, 0.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(got[1], [0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(got[2], [53.24, 80.09, 67.20], atol=0.05)  # sRGB red, D65


def test_sliced_wasserstein_is_a_distance_of_distributions():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))  # under `samples`: every point used
    assert sliced_wasserstein(a, a[::-1].copy()) < 1e-9  # the same cloud, another order
    shifted = [sliced_wasserstein(a, a + d) for d in (0.5, 1.0, 2.0)]
    assert shifted[0] < shifted[1] < shifted[2]
    # a shift along one axis by d: every direction u sees |u_0| d, whose mean over the sphere is d / 2
    assert sliced_wasserstein(a, a + np.array([2.0, 0, 0]), projections=512) == pytest.approx(1.0, rel=0.1)


def test_border_ratio_sees_a_frame():
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.05 * torch.rand(1, 3, 96, 96, generator=g)
    plain = border_ratio(x)
    framed = x.clone()
    framed[..., :4, :] = torch.rand(1, 3, 4, 96, generator=g)  # a noisy fringe along the top
    assert 0.7 < plain < 1.3 and border_ratio(framed) > 2 * plain


@pytest.fixture(scope="module")
def judge():
    return Judge(load_image(DATA / "starry_night.jpg"), size=128)


def test_the_photo_itself_scores_one_zero_one(judge):
    photo = load_image(DATA / "chelsea.jpg", size=128)
    s = judge.score(photo, photo)
    assert s.style_ratio == pytest.approx(1.0) and s.content_ratio == 0.0 and s.palette_ratio == pytest.approx(1.0)
    assert s.border_ratio == s.photo_border_ratio


def test_a_stylized_photo_moves_toward_the_painting(judge):
    photo = load_image(DATA / "chelsea.jpg", size=128)
    out = Stylizer.load(bundled_models()["johnson__starry_night"], device="cpu")(photo)
    s = judge.score(out, photo)
    assert s.style_ratio < 0.9 and 0.2 < s.content_ratio < 1.0 and s.palette_ratio < 0.9
    # the painting itself: no nearer the painting than 0, as far from the photo as it is (1)
    painting = judge.painting
    t = judge.score(painting, photo)
    assert t.style_ratio < 0.3 and t.content_ratio == pytest.approx(1.0, abs=0.05)


def test_a_prepared_photo_scores_the_same(judge):
    """Judge.prepare takes the photo's own measures once; scoring against it changes no figure."""
    photo = load_image(DATA / "chelsea.jpg", size=128)
    out = Stylizer.load(bundled_models()["johnson__starry_night"], device="cpu")(photo)
    ref = judge.prepare(photo)
    assert judge.score(out, ref) == judge.score(out, photo)
    assert judge.score(out, ref).style_ratio < 0.9  # a real stylization, not the photo against itself
    other = Judge(load_image(DATA / "the_scream.jpg"), size=128, net=judge.net)
    with pytest.raises(ValueError, match="another Judge"):
        other.score(out, ref)
