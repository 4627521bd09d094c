"""The demo chat model converter: idempotency and its errors (the conversion itself runs in the vllm engine
environment: tests/test_vllm_real.py serves its output)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from demo_models import smollm2


def test_finished_folder_is_left_alone(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / smollm2.MARKER).write_text("{}")
    (out / "model.safetensors").write_bytes(b"weights")
    assert smollm2.convert(out).startswith("up to date")
    assert (out / "model.safetensors").read_bytes() == b"weights"


def test_half_made_folder_is_refused(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(smollm2.ConvertError, match="remove it and run again"):
        smollm2.convert(out)


def test_missing_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2, "PACKAGE", "no_such_package_for_hub_tests")
    with pytest.raises(smollm2.ConvertError, match="hub engines setup vllm"):
        smollm2.convert(tmp_path / "m")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_command_line_error_is_one_line(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "junk").write_text("x")
    r = subprocess.run([sys.executable, "-m", "demo_models.smollm2", str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not a finished conversion" in r.stderr
