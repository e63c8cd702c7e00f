"""Training of the feed-forward networks: data, loss, checkpoints and resume, DDP, model files, nst run."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_deploy.cli import main
from nst_deploy.errors import NSTError
from nst_deploy.nets import create, list_models
from nst_deploy.nets.io import load_model, read_model, save_model
from nst_deploy.train import PhotoDataset, Trainer, TrainOptions, scan_photos

DATA = Path(__file__).resolve().parents[1] / "nst_deploy" / "data"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A tiny photograph folder (nested, one unreadable file among them)."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    src = Image.open(DATA / "chelsea.jpg").convert("RGB")
    src.resize((96, 72)).save(root / "a.png")
    src.crop((100, 50, 300, 250)).resize((80, 80)).save(root / "sub" / "b.jpg")
    src.transpose(Image.Transpose.FLIP_TOP_BOTTOM).resize((64, 90)).save(root / "c.webp")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def _opts(photos, style, tmp_path, **kw) -> TrainOptions:
    base = dict(style=str(style), data=str(photos), size=32, batch=2, steps=4, width=0.25, lr=5e-3,
                checkpoint_every=2, sample_every=1000, log_every=1, workdir=str(tmp_path / "work"))
    base.update(kw)
    return TrainOptions(**base)


def _quiet_trainer(o, out, **kw) -> Trainer:
    with pytest.warns(UserWarning, match="broken.jpg"):
        return Trainer(o, out, **kw)


# --- networks ------------------------------------------------------------------------------------

def test_registry():
    assert {"johnson", "multimodal"} <= set(list_models())
    with pytest.raises(NSTError, match="unknown network"):
        create("nope")
    with pytest.raises(NSTError, match="johnson"):
        create("johnson", depth=3)
    with pytest.raises(NSTError, match="width"):
        create("johnson", width=0)


@pytest.mark.parametrize("hw", [(37, 53), (64, 64), (8, 9), (101, 40)])
def test_johnson_shapes_and_range(hw):
    net = create("johnson", width=0.25).eval()
    x = torch.rand(2, 3, *hw)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    # batch items are independent (instance norm): item 0 alone gives the same output
    with torch.no_grad():
        assert torch.allclose(net(x[:1]), y[:1], atol=1e-5)


def test_johnson_structure():
    net = create("johnson")
    assert sum(p.numel() for p in net.parameters()) == 1679235  # the published widths 32/64/128
    assert not list(net.buffers())  # instance norm without running statistics
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules())
    small = create("johnson", width=0.5)
    assert sum(p.numel() for p in small.parameters()) < 0.3 * 1679235
    assert net.config() == {"width": 1.0, "n_residual": 5, "margin": 16}


# --- data ----------------------------------------------------------------------------------------

def test_scan_skips_unreadable(photos):
    with pytest.warns(UserWarning, match="broken.jpg"):
        files = scan_photos(photos)
    assert sorted(p.name for p in files) == ["a.png", "b.jpg", "c.webp"]


def test_scan_errors(tmp_path):
    with pytest.raises(NSTError, match="not a folder"):
        scan_photos(tmp_path / "missing")
    with pytest.raises(NSTError, match="no readable images"):
        scan_photos(tmp_path)


def test_dataset_is_a_function_of_seed_and_index(photos):
    with pytest.warns(UserWarning):
        files = scan_photos(photos)
    a = PhotoDataset(files, 24, seed=3, min_crop=0.5)
    b = PhotoDataset(files, 24, seed=3, min_crop=0.5)
    assert torch.equal(a.sample(7), b.sample(7))
    assert a.sample(7).shape == (3, 24, 24)
    assert not torch.equal(a.sample(7), a.sample(8))
    # every file once per epoch
    assert sorted(a.file_of(n).name for n in range(3)) == ["a.png", "b.jpg", "c.webp"]
    assert float(a.sample(1).min()) >= 0 and float(a.sample(1).max()) <= 1


# --- training ------------------------------------------------------------------------------------

def _fixed_loss(tr: Trainer, batch: torch.Tensor) -> float:
    with torch.no_grad():
        return float(tr.loss(batch)[0])


STEPS = 80  # the fixed batch's loss fell to 0.52x in 40 steps on an AVX2 CPU (0.47x in 60, 0.40x in 80)


def test_training_lowers_the_loss(photos, style, tmp_path):
    # the painting at the crop size, as STEPS was measured with (the default takes it at its own 64 px)
    o = _opts(photos, style, tmp_path, steps=STEPS, batch=2, lr=1e-2, checkpoint_every=1000, log_every=10,
              style_size=32)
    tr = _quiet_trainer(o, tmp_path / "m.pt")
    batch = torch.stack([tr.dataset.sample(n) for n in range(4)])
    before = _fixed_loss(tr, batch)
    out = tr.run()
    after = _fixed_loss(tr, batch)
    assert after < 0.5 * before, (before, after)
    assert out.is_file() and (tmp_path / "work" / "loss.json").is_file()
    assert len(tr.history) == STEPS // 10 and tr.history[-1]["step"] == STEPS
    net, meta = load_model(out)
    assert meta["arch"] == "johnson" and meta["steps"] == STEPS and meta["style"] == style.name
    with torch.no_grad():
        assert torch.allclose(net(batch), tr.model.eval().cpu()(batch), atol=1e-6)


def test_balance_style_weighs_the_layers_by_the_paintings_gram(photos, style, tmp_path):
    o = _opts(photos, style, tmp_path, balance_style=True, style_weight=1e3, steps=2,
              style_layers="relu1_1,relu2_1,relu3_1:0.5")
    tr = _quiet_trainer(o, tmp_path / "m.pt")
    layers = tr._level_loss(0).style.layers
    plain = _quiet_trainer(_opts(photos, style, tmp_path / "plain", style_layers="relu1_1,relu2_1,relu3_1:0.5"),
                           tmp_path / "p.pt")
    assert tr._level_loss(0).style_layers != plain._level_loss(0).style_layers
    assert layers == ["relu1_1", "relu2_1", "relu3_1"]
    tr.run()
    assert read_model(tmp_path / "m.pt")["meta"]["training"]["balance_style"] is True
    assert "balance_style" not in plain.o.learned()  # off: the digests of earlier runs stay as they were
    assert plain.o.learned()["style_weight"] == 5e-6 and plain.o.beta() == 5e-6  # the defaults, as recorded
    assert TrainOptions(balance_style=True).beta() == 6e4 and TrainOptions(style_weight=2.0).beta() == 2.0
    with pytest.raises(NSTError, match="other options"):  # a run with it on is not resumed with it off
        _quiet_trainer(_opts(photos, style, tmp_path, style_weight=1e3, steps=4,
                             style_layers="relu1_1,relu2_1,relu3_1:0.5"), tmp_path / "m.pt", resume=True).run()


def test_resume_matches_uninterrupted(photos, style, tmp_path):
    # on a GPU only deterministic kernels in fp32 repeat a run exactly (resumed or not)
    kw = dict(deterministic=True, precision="fp32") if torch.cuda.is_available() else {}
    straight = _quiet_trainer(_opts(photos, style, tmp_path / "a", steps=4, **kw), tmp_path / "a.pt")
    straight.run()
    first = _quiet_trainer(_opts(photos, style, tmp_path / "b", steps=2, **kw), tmp_path / "b.pt")
    first.run()
    second = _quiet_trainer(_opts(photos, style, tmp_path / "b", steps=4, **kw), tmp_path / "b.pt", resume=True)
    assert second.step == 0
    second.run()
    assert second.step == 4
    for (k, v), w in zip(straight.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.allclose(v, w, atol=1e-5, rtol=1e-4), k
    assert [h["step"] for h in second.history] == [1, 2, 3, 4]


def test_data_workers_give_the_same_batches(photos, style, tmp_path):
    """Decoding in worker processes changes nothing: the batches are a function of the step."""
    from nst_deploy.train import step_batches

    with pytest.warns(UserWarning):
        files = scan_photos(photos)
    ds = PhotoDataset(files, 24, seed=1, min_crop=0.5)
    a = step_batches(ds, 3, 4, 2, 1, workers=0)
    b = step_batches(ds, 3, 4, 2, 1, workers=1)
    for _ in range(2):
        x, y = next(a), next(b)
        assert x.shape == (2, 3, 24, 24) and torch.equal(x, y)
    assert torch.equal(next(a), torch.stack([ds.sample(5 * 4 + 2 + j) for j in range(2)]))


def test_resume_refuses_other_options(photos, style, tmp_path):
    _quiet_trainer(_opts(photos, style, tmp_path, steps=2), tmp_path / "m.pt").run()
    with pytest.raises(NSTError, match="other options"):
        _quiet_trainer(_opts(photos, style, tmp_path, steps=4, lr=1e-4), tmp_path / "m.pt", resume=True).run()
    with pytest.raises(NSTError, match="--resume"):  # a fresh run would overwrite the checkpoint
        _quiet_trainer(_opts(photos, style, tmp_path, steps=4), tmp_path / "m.pt").run()
    with pytest.raises(NSTError, match="more --steps"):
        _quiet_trainer(_opts(photos, style, tmp_path, steps=2), tmp_path / "m.pt", resume=True).run()
    with pytest.raises(NSTError, match="no checkpoint"):
        _quiet_trainer(_opts(photos, style, tmp_path / "other", steps=4), tmp_path / "o.pt", resume=True).run()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps(photos, style, tmp_path, precision):
    """The autocast path (bf16 on CUDA by default; fp16 with the grad scaler) runs and learns on any device."""
    o = _opts(photos, style, tmp_path, steps=3, precision=precision, checkpoint_every=1000)
    tr = _quiet_trainer(o, tmp_path / "m.pt")
    assert tr.precision == precision and tr.scaler.is_enabled() == (precision == "fp16")
    tr.run()
    assert all(math.isfinite(h["total"]) for h in tr.history)
    assert next(tr.model.parameters()).dtype == torch.float32  # autocast: the weights stay fp32


def test_bad_options(photos, style, tmp_path):
    for kw, msg in [({"arch": "vgg"}, "unknown --arch"), ({"size": 8}, "too small"), ({"lr": -1.0}, "--lr"),
                    ({"batch": 0}, "--batch"), ({"precision": "int8"}, "--precision"),
                    ({"style_layers": "conv9_9"}, "conv9_9"), ({"min_crop": 0.0}, "--min-crop"),
                    ({"seed": 2**64}, "--seed must be between"), ({"seed": -1}, "--seed must be between"),
                    ({"workdir": str(photos / "a.png")}, "workdir '.*a.png' exists and is not a folder"),
                    ({"workdir": str(photos / "a.png" / "w")}, "a.png' is not a folder")]:
        with pytest.raises(NSTError, match=msg):
            Trainer(_opts(photos, style, tmp_path, **kw), tmp_path / "m.pt")


@pytest.mark.parametrize("name, msg", [("m.onnx", "name it .pt"), ("m", "name it .pt"),
                                       ("missing/m.pt", "does not exist"), (".", "name it .pt")])
def test_cli_output_is_checked_first(photos, style, tmp_path, capsys, name, msg):
    from nst_deploy.cli import main

    rc = main(["train", "--data", str(photos), "--style", str(style), "-o", str(tmp_path / name), "--steps", "1",
               "--size", "32", "-q"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(err) == 1 and msg in err[0], err
    assert not (tmp_path / name).is_file()


def test_multimodal_trains(photos, style, tmp_path):
    o = _opts(photos, style, tmp_path, arch="multimodal", levels=2, size=32, steps=3, width=0.25)
    tr = _quiet_trainer(o, tmp_path / "mm.pt")
    batch = torch.stack([tr.dataset.sample(n) for n in range(2)])
    assert batch.shape[-1] == 64  # the crop is at the last level's size
    tr.run()
    net, meta = load_model(tmp_path / "mm.pt")
    assert meta["output_scale"] == 2
    with torch.no_grad():
        assert net(torch.rand(1, 3, 20, 28)).shape == (1, 3, 40, 56)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_match_one(photos, style, tmp_path):
    """torchrun with 2 CPU processes (gloo), batch 4 = 2 x 2, gives the one-process batch-4 update.

    Compared on the averaged gradient (Adam's first moment after one step is 0.1 g): Adam's first
    update is about lr * sign(g), so float rounding flips the sign of near-zero gradients.
    """
    args = ["train", "--style", str(style), "--data", str(photos), "--size", "32", "--batch", "4",
            "--steps", "1", "--width", "0.25", "--lr", "5e-3", "--device", "cpu", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "nst_deploy.cli", *args, "-o", str(tmp_path / "ddp.pt")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert main([*args, "-o", str(tmp_path / "one.pt")]) == 0  # (the CLI prints the skipped file)
    a, b = read_model(tmp_path / "ddp.pt"), read_model(tmp_path / "one.pt")
    assert a["meta"]["training_digest"] == b["meta"]["training_digest"]
    ca = torch.load(tmp_path / "ddp.pt.train" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "one.pt.train" / "checkpoint.pt", weights_only=True)
    ga, gb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert len(ga) == len(gb) == len(list(create("johnson", width=0.25).parameters()))
    top = max(float(s["exp_avg"].abs().max()) for s in gb.values())
    compared = 0
    for i in ga:
        x, y = ga[i]["exp_avg"], gb[i]["exp_avg"]
        scale = float(y.abs().max())
        # (fp32 summation order differs: measured up to 3e-4 of the tensor's largest gradient)
        if scale < 1e-5 * top:  # conv biases before an instance norm: zero gradient up to rounding
            continue
        assert torch.allclose(x, y, atol=1e-3 * scale, rtol=1e-3), (i, float((x - y).abs().max()), scale, top)
        compared += 1
    assert compared >= len(ga) // 2


# --- model files and nst run ---------------------------------------------------------------------

def test_model_file_errors(tmp_path):
    net = create("johnson", width=0.25)
    p = save_model(tmp_path / "m.pt", net, "johnson", {"style": "x"}, half=True)
    loaded, meta = load_model(p)
    assert next(loaded.parameters()).dtype == torch.float32 and meta["style"] == "x"
    data = p.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(NSTError, match="cannot be read"):
        load_model(tmp_path / "trunc.pt")
    (tmp_path / "rand.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(NSTError, match="cannot be read"):
        load_model(tmp_path / "rand.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(NSTError, match="not an nst-deploy model"):
        load_model(tmp_path / "other.pt")
    state = torch.load(p, weights_only=True)
    state["config"] = {"width": 0.5}
    torch.save(state, tmp_path / "misfit.pt")
    with pytest.raises(NSTError, match="shape"):
        load_model(tmp_path / "misfit.pt")
    with pytest.raises(NSTError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_nst_run(tmp_path, capsys):
    net = create("johnson", width=0.25)
    model = save_model(tmp_path / "m.pt", net, "johnson", {"style": "x", "output_scale": 1})
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 51, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "out.png"
    assert main(["run", str(model), str(src), "-o", str(out), "-q"]) == 0
    y = np.asarray(Image.open(out))
    assert y.shape == (37, 51, 3)
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(np.asarray(Image.open(src))).permute(2, 0, 1)[None].float() / 255)
    assert np.abs(y.astype(float) - ref[0].permute(1, 2, 0).numpy() * 255).max() <= 1.01
    capsys.readouterr()
    assert main(["run", str(tmp_path / "nope.pt"), str(src), "-o", str(tmp_path / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    assert main(["run", str(tmp_path / "bad.pt"), str(src), "-o", str(tmp_path / "x.png")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    assert main(["run", str(model), str(tmp_path / "missing.png"), "-o", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_the_painting_is_taken_at_384_px_at_least_by_default():
    """At small training crops the painting is not shrunk to the crop size (its Gram targets would come
    from a thumbnail); an explicit --style-size wins."""
    from nst_deploy.train import MIN_STYLE_SIDE, TrainOptions

    assert MIN_STYLE_SIDE == 384
    assert TrainOptions(size=128).style_side() == 384
    assert TrainOptions(size=512).style_side() == 512
    assert TrainOptions(size=128, style_size=200).style_side() == 200
    assert TrainOptions(size=128).style_side(native=300) == 300  # never upscaled past its own size
    assert TrainOptions(size=128).style_side(native=100) == 128
