"""The engine actor: runs on a Ray node, inside a detached actor that the ray runtime (hub/runtimes/ray.py) creates
with the model's resources; it starts the engine's process there and answers for it.

It travels by value (cloudpickle's register_pickle_by_value): a node needs Ray and the engine's environment, not the
hub, so this module imports only the standard library (and Ray, on the node, inside the actor).

Rules:
- The engine runs in its own process group (start_new_session), started by a thread of the actor that then waits
  for it: the engine gets SIGTERM when that thread's process dies (PR_SET_PDEATHSIG, Linux), so a killed actor or
  a node that goes down takes its engine along. `stop` kills the whole group: SIGTERM, then SIGKILL after the grace.
- Listen address: loopback (127.0.0.1) when the node is on the hub's own machine (same address as the hub's), else
  the node's address: nodes of one machine all report its network address, and the hub reaches them on loopback.
- What can be checked before starting is checked and reported by `info()["error"]` (the program or the working
  folder missing on this node, the port taken), never raised from the constructor: the hub then says it plainly.
- The engine gets the actor's environment (Ray's CUDA_VISIBLE_DEVICES for its GPUs, the spec's variables), less the
  OMP_NUM_THREADS=1 that Ray gives a worker reserving no CPU (an engine would run its CPU work on one thread).
- The engine's output goes to a file on the node; `logs` reads its tail, `log_text` its last MB for the hub to keep.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

_PR_SET_PDEATHSIG = 1
LOG_KEEP_BYTES = 1 << 20


def _die_with_parent() -> None:  # in the child between fork and exec: SIGTERM when the spawning thread's process dies
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def describe_exit(code: int) -> str:
    """"exited with code 1" or "killed by signal SIGKILL"."""
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def port_free(host: str, port: int) -> bool:
    """Whether `port` can be bound on `host` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class EngineActor:
    """One model's engine on one Ray node. `plan` (from the hub): program and args (the listen address goes between
    them, with bind_flag), env, cwd, model_path, port, namespace, missing_hint (what to do when the program is not
    on the node), hash (of the settings, for adoption after a hub restart)."""

    def __init__(self, model_id: str, plan: dict, hub_address: str) -> None:
        import ray  # on the node: Ray is there, the hub need not be

        self.model_id = model_id
        self.plan = plan
        self.node_id = ray.get_runtime_context().get_node_id()
        self.node_address = ray.util.get_node_ip_address()
        self.host = "127.0.0.1" if self.node_address == hub_address else self.node_address
        self.port = int(plan["port"])
        self.proc: subprocess.Popen | None = None
        self.code: int | None = None
        self.exited = threading.Event()
        folder = os.path.join(tempfile.gettempdir(), "hub-ray", plan.get("namespace", "hub"))
        os.makedirs(folder, exist_ok=True)
        self.log_path = os.path.join(folder, f"{model_id}.log")
        self.error = self._check()
        if self.error is None:
            self._spawn()

    def _where(self) -> str:
        return f"Ray node {self.node_id[:8]} ({self.node_address})"

    def _check(self) -> str | None:
        program, cwd, model_path = self.plan["program"][0], self.plan.get("cwd"), self.plan.get("model_path")
        if os.sep in program and not os.path.exists(program):
            hint = self.plan.get("missing_hint") or "install it there at the same path"
            return f"{program} does not exist on {self._where()}: {hint}"
        if cwd and not os.path.isdir(cwd):
            return f"the engine's working folder {cwd} does not exist on {self._where()}"
        if model_path and not os.path.exists(model_path):
            return (f"the model folder {model_path} does not exist on {self._where()}: put it there at the same "
                    "path (or on a shared file system)")
        if not port_free(self.host, self.port):
            return f"port {self.port} is in use on {self._where()}: retry (the hub picks another port each start)"
        return None

    def _spawn(self) -> None:
        started = threading.Event()
        failure: list[str] = []

        def run() -> None:  # spawns, then waits: the engine's parent thread lives exactly as long as the engine
            bind = [self.plan["bind_flag"], self.host] if self.plan.get("bind_flag") else []
            argv = [*self.plan["program"], *bind, *self.plan["args"]]
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.plan.get("env", {})}
            if not self.plan.get("num_cpus") and env.get("OMP_NUM_THREADS") == "1" and \
                    "OMP_NUM_THREADS" not in self.plan.get("env", {}):
                del env["OMP_NUM_THREADS"]  # Ray's default for a worker without CPUs: an engine uses the node's
            try:
                with open(self.log_path, "w") as log:
                    log.write(f"# hub: {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.model_id} on "
                              f"{self._where()}: {' '.join(argv)}\n")
                    log.flush()
                    self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                 cwd=self.plan.get("cwd"), env=env, start_new_session=True,
                                                 preexec_fn=_die_with_parent)
            except OSError as err:
                failure.append(f"cannot run {argv[0]!r} on {self._where()}: {err.strerror or err}")
                started.set()
                self.exited.set()
                return
            started.set()
            self.code = self.proc.wait()
            self.exited.set()

        threading.Thread(target=run, name=f"engine-{self.model_id}", daemon=True).start()
        started.wait()
        if failure:
            self.error = failure[0]

    def info(self) -> dict:
        """Where the engine runs and how it is: node, listen host and port, pid, settings hash, error (None: none)."""
        return {"node_id": self.node_id, "node_address": self.node_address, "host": self.host, "port": self.port,
                "pid": self.proc.pid if self.proc else None, "hash": self.plan.get("hash"), "error": self.error,
                "code": self.code, "log": self.log_path}

    def poll(self) -> int | None:
        """The engine's exit code (None: it runs)."""
        return self.code if self.exited.is_set() else None

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for the engine to exit: its exit code, or None while it runs."""
        self.exited.wait(timeout)
        return self.poll()

    def stop(self, timeout: float) -> int | None:
        """Stop the engine's process group: SIGTERM, then SIGKILL after `timeout` seconds (its children too)."""
        if self.proc is None:
            return None
        self._signal(signal.SIGTERM)
        if not self.exited.wait(timeout):
            self._signal(signal.SIGKILL)
            self.exited.wait(10)
        self._signal(signal.SIGKILL)  # children that outlived the leader
        return self.poll()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # type: ignore[union-attr]

    def logs(self, tail: int = 100) -> str:
        """The last `tail` lines of the engine's output."""
        lines = self.log_text().splitlines(keepends=True)
        return "".join(lines[-tail:]) if tail > 0 else ""

    def log_text(self) -> str:
        """The engine's output (its last MB)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - LOG_KEEP_BYTES))
                return f.read().decode(errors="replace")
        except OSError:
            return ""
