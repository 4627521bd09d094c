"""The process runtime: each engine is a subprocess in its own process group (so stopping it stops its children),
with its output in `<state_dir>/logs/<model>.log`. A spec's module runs with the Python of its engine environment
(`<envs_dir>/<env>/bin/python`), listening on loopback; GPUs named in the spec become CUDA_VISIBLE_DEVICES.
Stop sends SIGTERM to the group, then SIGKILL after the grace period. On Linux the engine also gets SIGTERM if the
hub dies without cleaning up (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from hub.engines.base import LaunchSpec
from hub.errors import RuntimeFailure
from hub.procs import die_with_parent
from hub.runtimes.base import Handle, Runtime, local_gpu_memory_gb
from hub.runtimes.logs import tail_file


class ProcessRuntime(Runtime):
    """Engines as local subprocesses."""

    name = "process"

    def __init__(self, log_dir: Path, envs_dir: Path) -> None:
        self.log_dir = log_dir
        self.envs_dir = envs_dir

    def engine_python(self, env_name: str) -> str:
        """The Python of an engine environment made by `hub engines setup`, or a RuntimeFailure saying how."""
        py = self.envs_dir / env_name / "bin" / "python"
        if not py.exists():
            raise RuntimeFailure(
                f"the {env_name} engine environment is missing ({py}): run `hub engines setup {env_name}`"
            )
        return str(py)

    def command_line(self, spec: LaunchSpec) -> tuple[list[str], dict[str, str]]:
        """The argv and the extra environment variables that run `spec` as a local process."""
        if spec.command:
            program = list(spec.command)
        elif spec.module and spec.env_name:
            program = [self.engine_python(spec.env_name), "-m", spec.module]
        else:
            raise RuntimeFailure("the engine's launch spec names neither a command nor a module and environment")
        bind = [spec.bind_flag, "127.0.0.1"] if spec.bind_flag else []
        env = dict(spec.environ)
        if isinstance(spec.gpus, list):
            env.setdefault("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in spec.gpus))
        return [*program, *bind, *spec.args], env

    async def gpu_memory_gb(self) -> dict[int, float]:
        return await asyncio.to_thread(local_gpu_memory_gb)

    def log_path(self, model_id: str) -> Path:
        """Where a model's engine writes its output."""
        return self.log_dir / f"{model_id}.log"

    async def start(self, model_id: str, spec: LaunchSpec, port: int) -> Handle:
        argv, extra_env = self.command_line(spec)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path(model_id)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra_env}
        with log.open("w") as f:
            f.write(f"# hub: {time.strftime('%Y-%m-%d %H:%M:%S')} starting {model_id}: {' '.join(argv)}\n")
            f.flush()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=f,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=spec.cwd,
                    env=env,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            except OSError as err:
                raise RuntimeFailure(f"cannot run {argv[0]!r}: {err.strerror or err}") from None
        return Handle(model_id, f"http://127.0.0.1:{port}", ref=proc, info={"pid": proc.pid, "port": port})

    async def alive(self, handle: Handle) -> bool:
        return handle.ref.returncode is None

    async def wait_exit(self, handle: Handle) -> str:
        code = await handle.ref.wait()
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"

    async def stop(self, handle: Handle, timeout: float) -> None:
        proc: asyncio.subprocess.Process = handle.ref
        self._signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            self._signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        # children that outlived the leader (or ignored SIGTERM) go too
        self._signal_group(proc.pid, signal.SIGKILL)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def logs(self, model_id: str, tail: int = 100) -> str:
        return tail_file(self.log_path(model_id), tail)
