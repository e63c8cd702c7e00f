"""The nst and nst-export entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nst_deploy.export.cli import main as export_main

from nst_deploy.cli import main
from nst_deploy.recipes import read_recipe


def test_help_lists_commands(capsys):
    assert main([]) == 2  # no command: the usage, as an error
    out = capsys.readouterr().err
    assert "layers" in out and "info" in out


def test_layers_vgg19(capsys):
    assert main(["layers", "--net", "vgg19"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[2:]]
    names = [r[0] for r in rows]
    assert names[0] == "conv1_1" and "conv5_4" in names and len(names) == 37
    conv4_2 = rows[names.index("conv4_2")]
    assert conv4_2[1:] == ["512", "28x28", "8"]


@pytest.mark.parametrize("net", ["vgg16", "alexnet", "googlenet"])
def test_layers_other_nets(capsys, net):
    assert main(["layers", "--net", net]) == 0
    assert net in capsys.readouterr().out


def test_layers_size_too_small(capsys):
    assert main(["layers", "--size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least 32" in err


def test_unknown_net_is_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["layers", "--net", "resnet50"])
    assert e.value.code == 2


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "vgg19_weights" in out


def test_export_says_what_it_cannot_do(tmp_path, capsys):
    assert export_main([str(tmp_path / "m.pt"), "-o", str(tmp_path / "out")]) == 2
    assert "nst-export: error" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["nst", "nst-export"])
def test_console_scripts_installed(script):
    exe = shutil.which(script, path=str(Path(sys.executable).parent)) or shutil.which(script)
    assert exe, f"{script} is not on PATH: is the package installed?"
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "usage:" in res.stdout


# --- nst stylize -------------------------------------------------------------------------------

DATA = Path(__file__).resolve().parents[1] / "nst_deploy" / "data"
FAST = ["--size", "48", "--steps", "3", "-q"]


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("nst: error: "), err
    return err[0]


def test_stylize_writes_a_stylized_image(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    out = tmp_path / "out.png"
    log = tmp_path / "log.json"
    rc = main(["stylize", str(DATA / "chelsea.jpg"), "--style", str(DATA / "starry_night.jpg"), "-o", str(out),
               "--size", "64", "--steps", "6", "--log-json", str(log)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "step 6/6" in err and "loss" in err and f"wrote {out}" in err
    img = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32)
    ref = np.asarray(Image.open(DATA / "chelsea.jpg").convert("RGB").resize((64, 43)), dtype=np.float32)
    assert img.shape == (43, 64, 3) and np.abs(img - ref).mean() > 5  # changed, not a copy
    import json

    assert [s["step"] for s in json.loads(log.read_text())["steps"]] == [1, 2, 3, 4, 5, 6]


def test_stylize_demo_without_images(tmp_path, monkeypatch, capsys):
    import nst_deploy.cli as cli

    monkeypatch.setitem(cli.DEMO, "size", 48)
    monkeypatch.setitem(cli.DEMO, "scales", [32, 48])
    monkeypatch.setitem(cli.DEMO, "steps", [2, 2])
    monkeypatch.chdir(tmp_path)
    assert main(["stylize", "-q"]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "nst-demo.png").size == (48, 32)
    assert "bundled demo" in capsys.readouterr().err


def test_stylize_recipe_and_flags_override(tmp_path):
    (tmp_path / "r.toml").write_text(
        f'content = "{DATA / "chelsea.jpg"}"\nstyle = "{DATA / "the_scream.jpg"}"\noutput = "o.png"\n'
        'size = 40\nsteps = 2\noptimizer = "adam"\n')
    assert main(["stylize", "--recipe", str(tmp_path / "r.toml"), "--size", "48", "-q"]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "o.png").size == (48, 32)  # output relative to the recipe, --size wins


def test_stylize_checkpoint_and_resume(tmp_path):
    ck = tmp_path / "c.ckpt"
    args = ["stylize", str(DATA / "chelsea.jpg"), "--style", str(DATA / "starry_night.jpg"), "--size", "48", "-q",
            "--checkpoint", str(ck), "-o", str(tmp_path / "o.png")]
    assert main(args + ["--steps", "2"]) == 0 and ck.exists()
    assert main(args + ["--steps", "4", "--resume"]) == 0
    # fewer steps than the checkpoint has done: refused, not a silent return of the later image
    out = tmp_path / "o.png"
    out.unlink()
    assert main(args + ["--steps", "3", "--resume"]) == 2 and not out.exists()


def test_stylize_interrupt_before_any_checkpoint_claims_none(tmp_path, monkeypatch, capsys):
    import nst_deploy.optimize as optimize

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(optimize, "stylize", interrupted)
    ck = tmp_path / "c.ckpt"
    args = ["stylize", str(DATA / "chelsea.jpg"), "--style", str(DATA / "starry_night.jpg"), "-q",
            "--checkpoint", str(ck), "-o", str(tmp_path / "o.png")]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "no checkpoint written yet" in err and "--resume" not in err
    ck.write_bytes(b"x")  # a checkpoint exists: the message points to it
    assert main(args) == 130
    assert "--resume" in capsys.readouterr().err


def test_stylize_refuses_to_overwrite_an_input(tmp_path, capsys):
    content = tmp_path / "c.jpg"
    shutil.copy(DATA / "chelsea.jpg", content)
    before = content.read_bytes()
    assert main(["stylize", str(content), "--style", str(DATA / "starry_night.jpg"), "-o", str(content)] + FAST) == 2
    assert "is an input image" in _one_error_line(capsys)
    assert content.read_bytes() == before


@pytest.mark.parametrize("extra,msg", [
    (["-o", "{tmp}/out.gif"], "use one of"),
    (["-o", "{tmp}/missing/out.png"], "does not exist"),
    (["--style", "{tmp}/nope.jpg"], "style image .* does not exist"),
    (["--style-weight", "1e300"], "NaN/Inf"),
    (["--resume"], "resume needs a checkpoint"),
    (["--content-layers", "conv9_9"], "conv9_9"),
    (["--steps", "0"], "steps must be at least 1"),
    (["--recipe", "{tmp}/none.toml"], "does not exist"),
    (["--log-json", "{tmp}/missing/log.json"], "cannot write log .*does not exist"),
    (["--log-json", "{tmp}"], "cannot write log .*is a folder"),
    (["--checkpoint", "{tmp}/missing/c.ckpt"], "cannot write checkpoint .*does not exist"),
    (["--seed", "99999999999999999999"], "seed must be between 0 and 2\\^63 - 1"),
    (["--device", "meta"], "cannot run this"),
    (["--style-layers", "conv1_1:inf"], "weight of conv1_1 must be a finite number"),
    (["--style-layers", "conv1_1:nan"], "weight of conv1_1 must be a finite number"),
    (["--quality", "0"], "quality must be between 1 and 100"),
])
def test_stylize_errors_are_one_line_and_leave_no_file(tmp_path, capsys, extra, msg):
    import re

    out = tmp_path / "out.png"
    args = ["stylize", str(DATA / "chelsea.jpg"), "--style", str(DATA / "starry_night.jpg"), "-o", str(out)] + FAST
    args += [a.replace("{tmp}", str(tmp_path)) for a in extra]
    rc = main(args)
    assert rc == 2
    if "1e300" in extra:  # the NaN guard warns as it recovers, then gives up with one error line
        lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert all(x.startswith("nst: warning: ") for x in lines[:-1]) and len(lines) == 6
        line = lines[-1]
    else:
        line = _one_error_line(capsys)
    assert re.search(msg, line), line
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_stylize_needs_a_style_for_a_content(tmp_path, capsys):
    assert main(["stylize", str(DATA / "chelsea.jpg"), "-o", str(tmp_path / "o.png")]) == 2
    assert "--style" in _one_error_line(capsys)


def test_stylize_unreadable_content_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    assert main(["stylize", str(bad), "--style", str(DATA / "starry_night.jpg"), "-o", str(tmp_path / "o.png")]
                + FAST) == 2
    assert "bad.png" in _one_error_line(capsys)
    assert not (tmp_path / "o.png").exists()


def _half_masks(tmp_path, w=48, h=32):
    from PIL import Image

    left = Image.new("L", (w, h), 0)
    left.paste(255, (0, 0, w // 2, h))
    right = Image.eval(left, lambda v: 255 - v)
    left.save(tmp_path / "left.png")
    right.save(tmp_path / "right.png")
    return tmp_path / "left.png", tmp_path / "right.png"


def test_stylize_two_styles_with_masks_and_weights(tmp_path, capsys):
    left, right = _half_masks(tmp_path)
    out = tmp_path / "o.png"
    rc = main(["stylize", str(DATA / "chelsea.jpg"), "--style", str(DATA / "starry_night.jpg"), "--style",
               str(DATA / "the_scream.jpg"), "--mask", str(left), "--mask", str(right), "--style-weights", "1,2",
               "-o", str(out)] + FAST)
    assert rc == 0, capsys.readouterr().err
    from PIL import Image

    assert Image.open(out).size == (48, 32)


def test_stylize_recipe_with_style_tables(tmp_path):
    left, right = _half_masks(tmp_path)
    (tmp_path / "r.toml").write_text(
        f'content = "{DATA / "chelsea.jpg"}"\noutput = "o.png"\nsize = 48\nsteps = 2\nstyle-rep = "gram"\n'
        f'[[styles]]\nimage = "{DATA / "starry_night.jpg"}"\nweight = 2\nlayers = "conv1_1,conv2_1"\n'
        f'mask = "left.png"\n'
        f'[[styles]]\nimage = "{DATA / "the_scream.jpg"}"\nlayers = ["conv3_1", "conv4_1"]\nmask = "right.png"\n')
    assert main(["stylize", "--recipe", str(tmp_path / "r.toml"), "-q"]) == 0
    assert (tmp_path / "o.png").exists()
    r = read_recipe(tmp_path / "r.toml")
    assert r["styles"][0]["mask"] == str(tmp_path / "left.png") and r["styles"][0]["weight"] == 2.0


@pytest.mark.parametrize("table,msg", [
    ('[[styles]]\nimage = "a.jpg"\ncolour = 1\n', r"styles\[1\]\.colour: unknown key"),
    ('[[styles]]\nimage = "a.jpg"\nweight = -1\n', r"styles\[1\]\.weight must be a finite number"),
    ('[[styles]]\nweight = 1\n', r"styles\[1\] has no image"),
    ('[[styles]]\nimage = "a.jpg"\nlayers = "conv1_1:x"\n', r"styles\[1\]\.layers: .*not a number"),
    ('style = "b.jpg"\n[[styles]]\nimage = "a.jpg"\n', "either 'style' or"),
    ('styles = 3\n', "must be \\[\\[styles\\]\\] tables"),
])
def test_recipe_style_table_errors_name_the_key(tmp_path, table, msg):
    from nst_deploy.errors import NSTError

    (tmp_path / "r.toml").write_text(table)
    with pytest.raises(NSTError, match=msg):
        read_recipe(tmp_path / "r.toml")


@pytest.mark.parametrize("extra,msg", [
    (["--mask", "{left}"], "1 masks for 2 styles"),
    (["--style-weights", "1,2,3"], "3 style weights for 2 styles"),
    (["--style-layers", "conv1_1", "--style-layers", "conv2_1", "--style-layers", "conv3_1"],
     "3 --style-layers for 2 styles"),
    (["--multi-style", "blend", "--style-rep", "local"], "blend is not available"),
    (["--window", "2"], "window .* needs style-rep local"),
    (["--mask", "{left}", "--mask", "{tmp}/none.png"], "mask 2 .* does not exist"),
])
def test_stylize_several_styles_errors(tmp_path, capsys, extra, msg):
    import re

    left, _ = _half_masks(tmp_path)
    out = tmp_path / "out.png"
    args = ["stylize", str(DATA / "chelsea.jpg"), "--style", str(DATA / "starry_night.jpg"), "--style",
            str(DATA / "the_scream.jpg"), "-o", str(out)] + FAST
    args += [a.replace("{left}", str(left)).replace("{tmp}", str(tmp_path)) for a in extra]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert re.search(msg, line), line
    assert not out.exists()


def test_stylize_mask_of_the_wrong_aspect_is_one_line(tmp_path, capsys):
    from PIL import Image

    Image.new("L", (40, 40), 255).save(tmp_path / "sq.png")
    out = tmp_path / "out.png"
    args = ["stylize", str(DATA / "chelsea.jpg"), "--style", str(DATA / "starry_night.jpg"), "--style",
            str(DATA / "the_scream.jpg"), "--mask", str(tmp_path / "sq.png"), "--mask", str(tmp_path / "sq.png"),
            "-o", str(out)] + FAST
    assert main(args) == 2
    assert "aspect ratios" in _one_error_line(capsys) and not out.exists()


@pytest.mark.parametrize("argv, msg", [
    (["stylize", "{tmp}", "--style", str(DATA / "starry_night.jpg"), "-o", "{tmp}/o.png"], "is a folder, not an image"),
    (["stylize", str(DATA / "chelsea.jpg"), "--style", "{tmp}", "-o", "{tmp}/o.png"], "is a folder, not an image"),
    (["run", "{tmp}", str(DATA / "chelsea.jpg"), "-o", "{tmp}/o.png"], "is a folder"),
    (["stylize", str(DATA / "chelsea.jpg"), "--style", str(DATA / "starry_night.jpg"), "-o", "{tmp}/o.png",
      "--weights", "{tmp}/empty.pt"], "the file is empty"),
    (["stylize", str(DATA / "chelsea.jpg"), "--style", str(DATA / "starry_night.jpg"), "-o", "{tmp}/o.png",
      "--weights", "{tmp}/notes.txt"], "not a PyTorch file"),
])
def test_folders_and_non_torch_files_are_named_as_such(tmp_path, capsys, argv, msg):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello world")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["-q"]) == 2
    assert msg in _one_error_line(capsys)
    assert not (tmp_path / "o.png").exists()


def test_stylize_all_black_mask_is_refused(tmp_path, capsys):
    from PIL import Image

    Image.new("L", Image.open(DATA / "chelsea.jpg").size, 0).save(tmp_path / "black.png")
    args = ["stylize", str(DATA / "chelsea.jpg"), "--style", str(DATA / "starry_night.jpg"), "--mask",
            str(tmp_path / "black.png"), "-o", str(tmp_path / "o.png")] + FAST
    assert main(args) == 2
    assert "is empty (all black)" in _one_error_line(capsys)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_run_out_of_memory_is_advice(tmp_path, capsys, monkeypatch, error):
    from nst_deploy.runtime import Stylizer

    def exhausted(self, x, **controls):
        raise error

    monkeypatch.setattr(Stylizer, "__call__", exhausted)
    assert main(["run", "starry_night", str(DATA / "chelsea.jpg"), "-o", str(tmp_path / "o.png"), "-q"]) == 2
    assert "not enough memory" in _one_error_line(capsys)
    assert not (tmp_path / "o.png").exists()
