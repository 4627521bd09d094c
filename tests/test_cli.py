"""The `hub` CLI against a running hub: ps, up, down, logs, and one-line errors with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import free_port, responder_command


def test_ps_up_down_logs(hub_factory) -> None:
    hub = hub_factory(f'[models.echo]\ntype = "text"\nengine = "command"\nmemory_gb = 2\n[models.echo.args]\n'
                      f"command = {responder_command()}\n")
    up = hub.cli("up", "echo")
    assert up.returncode == 0 and up.stdout.strip() == "echo: ready"
    ps = hub.cli("ps")
    assert ps.returncode == 0
    row = next(line for line in ps.stdout.splitlines() if line.startswith("echo"))
    assert "ready" in row and "command" in row and "2 / - GB" in row
    logs = hub.cli("logs", "echo", "-n", "5")
    assert logs.returncode == 0 and "responder: model test" in logs.stdout
    down = hub.cli("down", "echo")
    assert down.returncode == 0 and down.stdout.strip() == "echo: stopped"
    assert hub.models()["echo"]["state"] == "stopped"
    missing = hub.cli("up", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "hub: model 'nope' does not exist (available: echo)"


def test_unreachable_hub_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = subprocess.run([sys.executable, "-m", "hub.cli", "ps", "--url", url], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == f"hub: cannot reach the hub at {url}: is `hub serve` running?"
    assert "Traceback" not in r.stderr


def test_a_timeout_that_is_not_positive_is_a_usage_error() -> None:
    for cmd in (["reload"], ["up", "m"], ["down", "m"]):
        r = subprocess.run([sys.executable, "-m", "hub.cli", *cmd, "--timeout", "-1", "--url", "http://127.0.0.1:1"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "must be more than 0 seconds" in r.stderr, r.stderr


def test_serve_with_an_invalid_registry_exits_1(tmp_path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('[hub]\nport = "eighty"\n')
    r = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "hub.port: Input should be a valid integer" in r.stderr


def test_serve_on_a_port_in_use_is_one_line(hub_factory) -> None:
    hub = hub_factory("")
    r = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--config", str(hub.config), "--no-ui"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().lower().endswith("address already in use; stop what uses it or pass --port")
