"""The nst and nst-export entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nst_deploy.export.cli import main as export_main

from nst_deploy.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
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
