"""`make test-latest`: the canary for upgrades (not part of CI).

1. Every lock is made again from the newest versions its inputs allow (pyproject's exact pins relaxed to `>=`, so a
   newer gradio or uv shows up too), into a throwaway folder; what would move is printed, lock by lock.
2. A throwaway hub environment is made from the newest hub-test lock, and the fast tiers (everything not marked
   engine, browser or docker) run there.
3. When tests fail, they run again with the committed lock: those that fail there too are no upgrade's doing and
   are reported as such. For the others, each package that moved is tried alone (the committed lock with only that
   package, and what it needs, upgraded): the packages whose upgrade alone fails them are named.

The engine environments' newest versions are listed, not installed (several GB each); their tiers need the engines.
Exit status: 0 when the newest versions pass, 1 when something breaks (the culprits named), 2 when it could not run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hub import locks  # noqa: E402

FAST = "not engine and not browser and not docker"
# tests of the committed locks themselves (that the installed uv is the pinned one): not about an upgrade
NOT_HERE = ("tests/test_locks.py",)


def say(msg: str) -> None:
    """One line of progress."""
    print(f"test-latest: {msg}", flush=True)


def relaxed_pyproject(dst: Path) -> Path:
    """A copy of pyproject.toml whose exact pins (`==`) are lower bounds (`>=`), for the newest of everything."""
    text = (ROOT / "pyproject.toml").read_text()
    out = dst / "pyproject.toml"
    out.write_text(re.sub(r'("[A-Za-z0-9_.\-\[\]]+)==([^"]+")', r"\1>=\2", text))
    return out


def newest(tmp: Path, uv: str) -> dict[str, tuple[Path, dict[str, tuple[str, str]]]]:
    """Each lock made anew from the newest versions: name -> (its file, {package: (locked, newest)} that moved)."""
    relaxed = relaxed_pyproject(tmp)
    out: dict[str, tuple[Path, dict[str, tuple[str, str]]]] = {}
    for lock in locks.LOCKS.values():
        target = tmp / "locks" / lock.path.name
        _make(lock, uv, target, relaxed if lock.source.startswith("pyproject") else None)
        old, new = locks.pinned(lock), locks.pinned_text(target.read_text())
        moved = {p: (old.get(p, "-"), v) for p, v in new.items() if old.get(p) != v}
        moved.update({p: (v, "-") for p, v in old.items() if p not in new})
        out[lock.name] = (target, moved)
        say(f"{lock.name}: {len(moved)} of {len(new)} packages would move"
            + (": " + ", ".join(f"{p} {a} -> {b}" for p, (a, b) in sorted(moved.items())) if moved else ""))
    return out


def _make(lock: locks.Lock, uv: str, target: Path, pyproject: Path | None) -> None:
    if pyproject is None:
        locks.make(lock, uv, progress=lambda s: None, out=target, upgrade=True)
        return
    # uv reads the project's dependencies from the relaxed copy, beside which it runs
    argv = locks.compile_argv(lock, uv, [str(pyproject)] + (["--extra", "test"] if "[test]" in lock.source else []),
                              target, upgrade=True)
    r = subprocess.run(argv, capture_output=True, text=True, env=locks.uv_env(), cwd=pyproject.parent)
    if r.returncode != 0:
        raise locks.LockError(f"locking {lock.name} with the newest versions failed: {r.stderr.strip()[-1500:]}")


def make_env(venv: Path, lock_file: Path, uv: str) -> None:
    """A throwaway environment exactly `lock_file`, with the project editable on top."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, env=locks.uv_env())
    argv = [uv, "pip", "sync", "--quiet", "--python", str(venv / "bin" / "python"), "--require-hashes", str(lock_file)]
    subprocess.run(argv, check=True, env=locks.uv_env())
    subprocess.run(locks.project_argv(uv, venv / "bin" / "python"), check=True, env=locks.uv_env(),
                   capture_output=True)


def run_tests(venv: Path, tests: list[str], log: Path) -> list[str]:
    """Run pytest in `venv` (the fast tiers, or `tests`); returns the node ids that failed or errored."""
    argv = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", FAST, "-rfE",
            "--timeout", "300", *(f"--ignore={t}" for t in NOT_HERE), *tests]
    with log.open("w") as f:
        r = subprocess.run(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)
    if r.returncode not in (0, 1) and not failed:
        failed = [f"(pytest exit {r.returncode}: see {log})"]
    tail = [ln for ln in text.splitlines() if ln.strip()][-1:]
    say(f"pytest: {tail[0] if tail else 'no output'} (log: {log})")
    return failed


def culprits(tmp: Path, uv: str, moved: dict[str, tuple[str, str]], failed: list[str]) -> dict[str, list[str]]:
    """Each moved package alone on top of the committed lock: which of the failed tests its upgrade fails."""
    lock = locks.LOCKS["hub-test"]
    found: dict[str, list[str]] = {}
    tests = [t for t in failed if "::" in t or t.endswith(".py")] or failed
    for pkg, (old, new) in sorted(moved.items()):
        if new == "-":
            continue
        one = tmp / "one" / f"{pkg}.txt"
        one.parent.mkdir(exist_ok=True)
        one.write_text(lock.path.read_text())
        argv = locks.compile_argv(lock, uv, [str(tmp / "pyproject.toml"), "--extra", "test"], one)
        argv += ["--upgrade-package", f"{pkg}=={new}"]
        r = subprocess.run(argv, capture_output=True, text=True, env=locks.uv_env(), cwd=tmp)
        if r.returncode != 0:
            say(f"{pkg} {new} alone cannot be resolved with the committed lock: {r.stderr.strip()[-300:]}")
            continue
        venv = tmp / "venv-one"
        make_env(venv, one, uv)
        again = run_tests(venv, tests, tmp / f"pytest-{pkg}.log")
        if again:
            found[f"{pkg} {old} -> {new}"] = again
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the canary; see the module docstring."""
    p = argparse.ArgumentParser(prog="make test-latest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", action="store_true", help="keep the throwaway folder (its path is printed)")
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="hub-test-latest-"))
    try:
        uv = locks.uv_bin()
        say(f"making every lock from the newest versions in {tmp}")
        new = newest(tmp, uv)
        hub_lock, moved = new["hub-test"]
        say("a throwaway hub environment from the newest hub-test lock")
        make_env(tmp / "venv", hub_lock, uv)
        failed = run_tests(tmp / "venv", [], tmp / "pytest-latest.log")
        if not failed:
            say(f"the newest versions pass the fast tiers ({len(moved)} packages newer than locks/hub-test.txt)")
            return 0
        say(f"{len(failed)} failed with the newest versions: {', '.join(failed[:20])}")
        make_env(tmp / "venv-locked", locks.LOCKS["hub-test"].path, uv)
        also = set(run_tests(tmp / "venv-locked", failed, tmp / "pytest-locked.log"))
        if also:
            say(f"NOT AN UPGRADE: {len(also)} fail with the committed lock too: {', '.join(sorted(also)[:20])}")
        failed = [t for t in failed if t not in also]
        if not failed:
            return 1
        if not moved:
            say("no package moved, yet these fail only in the throwaway environment: see the logs")
            return 1
        found = culprits(tmp, uv, moved, failed)
        for what, tests in found.items():
            say(f"BREAKS: {what}: {', '.join(tests[:10])}")
        if not found:
            say("no single upgrade fails them alone: a combination does (see the logs)")
        return 1
    except (locks.LockError, subprocess.CalledProcessError) as err:
        say(f"error: {err}")
        return 2
    finally:
        if a.keep:
            say(f"kept {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    sys.exit(main())
