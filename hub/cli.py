"""The `hub` command: serve the hub, check a registry, and control a running hub (ps, up, down, logs, pull,
reload, batch)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from hub.client import Admin, AdminError
from hub.config import CLIENT_URL_ENV, Registry, client_api_key, client_url
from hub.downloads.pull import add_pull_command
from hub.downloads.status import describe_download
from hub.errors import ConfigError, HubError
from hub.registry import load_registry

DEFAULT_CONFIG = "models.toml"


class CLIError(Exception):
    """A one-line error for the person at the terminal; exits 1."""


def _registry(path: str) -> Registry:
    return load_registry(path)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a registry and print a summary."""
    reg = _registry(args.config)
    print(f"{args.config}: ok, {len(reg.models)} model(s)")
    for mid, m in reg.models.items():
        mem = f"{m.memory_gb:g} GB" if m.memory_gb is not None else "memory measured"
        where = "external" if m.engine == "openai" else f"{reg.runtime_of(mid)}@{','.join(m.hosts)}"
        print(f"  {mid:<24} {m.type:<13} {m.engine:<10} {where:<16} {mem}")
    budget = reg.hub.memory_budget_gb
    print(f"  budget: {f'{budget:g} GB' if budget else 'unlimited'}; state dir: {reg.state_dir}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the hub until Ctrl-C or SIGTERM; engines it started are stopped on the way out."""
    import gc
    import logging

    import uvicorn

    from hub.router import create_app
    from hub.serving import server_options

    reg = _registry(args.config)
    host = args.host or reg.hub.host
    port = args.port or reg.hub.port
    _check_bindable(host, port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    reg.hub.host, reg.hub.port = host, port  # the web app's clients call the hub where it really listens
    if args.share and args.no_ui:
        raise CLIError("--share shares the web app: drop --no-ui")
    from hub.reloading import Reloading

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
    app = create_app(reg, ui=not args.no_ui,
                     reloading=Reloading(reg.path, overrides, sighup=True, watch=args.watch))
    close_share = None
    if args.share:
        from hub.ui import share_ui

        def report(url: str | None, error: str | None) -> None:
            print(f"hub: web app shared at {url} (any user name, the API key as password)" if url else
                  f"hub: no share link ({error or 'Gradio could not reach its share server: no internet?'}); "
                  "the web app is served locally only", flush=True)

        close_share = share_ui(reg, report)
    print(f"hub: serving {len(reg.models)} model(s) on http://{host}:{port} (API /v1, admin /hub, web app /)",
          flush=True)
    # What was made at startup (the imports, the app, the web app) lives as long as the process: out of the
    # collector's way, so that its passes during serving walk only what requests make (a full pass over the startup
    # heap takes tens of ms, a stall for every request in flight).
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5,
                    **server_options(reg.hub))
    finally:
        if close_share:
            close_share()
    return 0




def _check_bindable(host: str, port: int) -> None:
    """A one-line error now, rather than a server log line later, when the address cannot be served."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as err:
        raise CLIError(f"cannot serve on {host}:{port}: {err.strerror}; stop what uses it or pass --port") from None


def _url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/").removesuffix("/v1")
    if os.environ.get(CLIENT_URL_ENV):
        return client_url()
    return client_url(_registry(args.config) if Path(args.config).exists() else None)


def _api_key(args: argparse.Namespace) -> str | None:
    return client_api_key(_registry(args.config) if Path(args.config).exists() else None)


def _admin(args: argparse.Namespace) -> Admin:
    """The admin client of the hub the command talks to."""
    return Admin(_url(args), _api_key(args))


def _seconds(value: str) -> float:
    """A --timeout: a positive number of seconds (a negative one crashed the HTTP client with a traceback)."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {value}")
    return seconds


def _fmt_time(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    ago = now - ts
    return f"{ago:.0f}s ago" if ago < 120 else f"{ago / 60:.0f}m ago"


def cmd_ps(args: argparse.Namespace) -> int:
    """List the models of a running hub with their state."""
    data: dict[str, Any] = _admin(args).models()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    now = data.get("time", 0)
    print(f"{'MODEL':<24} {'TYPE':<6} {'ENGINE':<10} {'RUNTIME':<9} {'STATE':<11} {'RUN/WAIT':<9} {'MEMORY':<16} "
          "LAST USED")
    for m in data["data"]:
        declared = f"{m['memory_gb']:g}" if m.get("memory_gb") is not None else "-"
        measured = f"{m['measured_gb']:.2f}" if m.get("measured_gb") is not None else "-"
        requests = f"{m.get('in_flight', 0)}/{m.get('queued', 0)}"
        print(f"{m['id']:<24} {m['type']:<6} {m['engine']:<10} {m['runtime']:<9} {m['state']:<11} {requests:<9} "
              f"{declared + ' / ' + measured + ' GB':<16} {_fmt_time(m.get('last_used'), now)}")
        if m["state"] == "failed" and m.get("reason"):
            print(f"  └ {m['reason']}")
        if m.get("pending"):
            print(f"  └ {m['pending']}")
        if m["state"] == "downloading" and m.get("download"):
            print(f"  └ downloading {describe_download(m['download'])}")
    for b in data.get("budgets", []):
        if b["budget_gb"]:
            print(f"budget {b['host']}: {b['used_gb']:g} of {b['budget_gb']:g} GB in use")
        if b.get("sleep_budget_gb") is not None:
            asleep = b.get("sleep_used_gb") or 0
            print(f"sleep budget {b['host']}: {asleep:g} of {b['sleep_budget_gb']:g} GB of RAM held by sleeping models")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Start a model on a running hub and wait until it is ready."""
    m = _admin(args).load(args.model, timeout=args.timeout)
    print(f"{m['id']}: {m['state']}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop a model on a running hub."""
    m = _admin(args).unload(args.model, timeout=args.timeout)
    print(f"{m['id']}: {m['state']}")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """Make a running hub reread its registry file and apply the changes; one line per change."""
    try:
        report = _admin(args).reload(args.restart, timeout=args.timeout)
    except AdminError as err:  # every problem of a broken file, not only the first line
        raise CLIError(str(err)) from None
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from hub.manager.reload import ReloadReport

    for line in ReloadReport.model_validate(report).lines():
        print(line)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the tail of a model's engine log."""
    sys.stdout.write(_admin(args).logs(args.model, args.tail))
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    """Download a model's source into the hub's cache (hub/downloads/pull.py)."""
    from hub.downloads.pull import PullFailed, pull

    try:
        return pull(_admin(args), args)
    except PullFailed as err:
        raise CLIError(str(err)) from None


def _batch_line(b: dict[str, Any]) -> str:
    counts = b.get("request_counts") or {}
    done = f"{counts.get('completed', 0)}+{counts.get('failed', 0)}/{counts.get('total', 0)}"
    return f"{b['id']:<32} {b['status']:<11} {done:<15} {b['endpoint']:<24} {b.get('created_at', 0)}"


def cmd_batch(args: argparse.Namespace) -> int:
    """List, show or cancel the batches of a running hub."""
    admin = _admin(args)
    if args.action == "ls":
        data: Any = admin.batches(args.limit)
    elif args.action == "show":
        data = admin.batch(args.batch_id)
    else:
        data = admin.cancel_batch(args.batch_id)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{'BATCH':<32} {'STATUS':<11} {'DONE+FAILED':<15} {'ENDPOINT':<24} CREATED")
    for b in data if isinstance(data, list) else [data]:
        print(_batch_line(b))
    if args.action == "show":
        for key in ("input_file_id", "output_file_id", "error_file_id", "expires_at", "completed_at", "metadata"):
            if data.get(key) is not None:
                print(f"  {key}: {data[key]}")
        for e in (data.get("errors") or {}).get("data", []):
            print(f"  error: {e.get('message')}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build the Diffusers engine image (docker/diffusers/Dockerfile) on a Docker host of the registry."""
    from hub.build import build_image
    from hub.engines.diffusers import DEFAULT_IMAGE
    from hub.errors import RuntimeFailure

    reg = _registry_or_defaults(args.config)
    if args.host != "local" and args.host not in reg.hosts:
        raise CLIError(f"unknown host {args.host!r} (valid: {', '.join(['local', *reg.hosts])})")
    try:
        build_image(reg, args.host, args.tag or DEFAULT_IMAGE, args.base_image,
                    [Path(w) for w in args.wheel], args.network, device=args.device)
    except RuntimeFailure as err:
        raise CLIError(str(err)) from None
    return 0


def _registry_or_defaults(path: str) -> Registry:
    """The registry at `path`, or the defaults when there is no such file (setup commands work without one)."""
    return load_registry(path) if Path(path).exists() else Registry()


def cmd_engines_setup(args: argparse.Namespace) -> int:
    """Make the engines' own virtual environments (idempotent)."""
    from hub.envsetup import setup

    reg = _registry_or_defaults(args.config)
    setup(args.names or ["all"], reg.envs_dir, device=args.device, progress=lambda s: print(s, flush=True))
    return 0


def cmd_demo_prepare(args: argparse.Namespace) -> int:
    """Make the demo models under the state dir (idempotent)."""
    from hub.demo import prepare

    reg = _registry_or_defaults(args.config)
    prepare(reg, args.names or None, progress=lambda s: print(s, flush=True), families=args.families)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="hub", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="show whole error messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", default=os.environ.get("HUB_CONFIG", DEFAULT_CONFIG),
                        help="registry file (default: $HUB_CONFIG, else models.toml)")
        sp.set_defaults(fn=fn)
        return sp

    sp = add("serve", cmd_serve, "serve the API (/v1), the admin API (/hub) and the web app (/)")
    sp.add_argument("--host", help="bind address (default: the registry's [hub] host)")
    sp.add_argument("--port", type=int, help="port (default: the registry's [hub] port)")
    sp.add_argument("--share", action="store_true", help="ask Gradio for a public share link (needs an API key)")
    sp.add_argument("--no-ui", action="store_true", help="serve the API only")
    sp.add_argument("--watch", action="store_true", help="reload the registry file when it changes (polled every "
                    "second); SIGHUP reloads it too")
    add("check", cmd_check, "validate a registry file")
    sp = add("build", cmd_build, "build the Diffusers engine image (docker/diffusers/Dockerfile) on a Docker host")
    sp.add_argument("--host", default="local", help="the registry's Docker host to build on (default: local)")
    sp.add_argument("--tag", help="image tag (default: the diffusers engine's image)")
    sp.add_argument("--base-image", help="BASE_IMAGE build argument (python3 3.11+ with venv; a CUDA image for GPUs)")
    sp.add_argument("--wheel", action="append", default=[],
                    help="a wheel to install before the index is asked (the CPU torch wheel for a CPU image)")
    sp.add_argument("--network", help="network of the build steps, e.g. host (a daemon without a bridge)")
    sp.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="the lock the image installs: locks/diffusers-cuda.txt (default) or diffusers-cpu.txt, whose "
                         "torch wheel --wheel must bring")
    for name, fn, help_ in [("ps", cmd_ps, "list the models of a running hub"),
                            ("up", cmd_up, "start a model and wait until it is ready"),
                            ("down", cmd_down, "stop a model"),
                            ("logs", cmd_logs, "print the tail of a model's engine log"),
                            ("reload", cmd_reload, "make a running hub reread its registry file and apply it")]:
        sp = add(name, fn, help_)
        sp.add_argument("--url", help="the hub's URL (default: $HUB_URL, else the registry's host and port)")
        if name not in ("ps", "reload"):
            sp.add_argument("model", help="model id")
        if name in ("ps", "reload"):
            sp.add_argument("--json", action="store_true", help="print the raw JSON")
        if name == "reload":
            sp.add_argument("--restart", action="store_true",
                            help="restart changed engines now (drained first), rather than once each is idle")
            sp.add_argument("--timeout", type=_seconds, default=120.0, help="seconds to wait (default: 120)")
        if name in ("up", "down"):
            sp.add_argument("--timeout", type=_seconds, default=900.0, help="seconds to wait (default: 900)")
        if name == "logs":
            sp.add_argument("-n", "--tail", type=int, default=200, help="lines (default: 200)")
    add_pull_command(add, cmd_pull)
    sp = add("batch", cmd_batch, "list, show or cancel the batches of a running hub (OpenAI's Batch API)")
    bsub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_ in (("ls", "list the newest batches"), ("show", "one batch with its files"),
                          ("cancel", "cancel a batch: no more lines are sent, those under way finish")):
        bp = bsub.add_parser(action, help=help_)
        bp.add_argument("--url", help="the hub's URL (default: $HUB_URL, else the registry's host and port)")
        bp.add_argument("--json", action="store_true", help="print the raw JSON")
        bp.add_argument("--config", default=argparse.SUPPRESS,
                        help="registry file (default: $HUB_CONFIG, else models.toml)")
        if action == "ls":
            bp.add_argument("-n", "--limit", type=int, default=20, help="how many (default: 20, at most 100)")
        else:
            bp.add_argument("batch_id", help="batch id (batch_...)")
    sp = add("engines", cmd_engines_setup, "manage the engines' own virtual environments")
    esub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    ep = esub.add_parser("setup", help="create or update engine environments under the envs dir ($HUB_ENVS_DIR, "
                         "else <state_dir>/envs); run again, it reuses what exists")
    ep.add_argument("names", nargs="*", metavar="ENGINE",
                    help="vllm, diffusers or all (default: all)")
    ep.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="which vLLM build to install (default: auto, CUDA when nvidia-smi finds a GPU)")
    ep.add_argument("--config", default=argparse.SUPPRESS,
                    help="registry whose state_dir holds the envs (default: $HUB_CONFIG, else models.toml)")
    sp = add("demo", cmd_demo_prepare, "prepare the demo models of models.demo.toml")
    dsub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    dp = dsub.add_parser("prepare", help="make the demo models under <state_dir>/models; run again, it reuses them")
    dp.add_argument("names", nargs="*", metavar="MODEL",
                    help="smollm2-135m-instruct, tiny-sd, all-minilm-l6-v2, tiny-vlm (default: all); with --families: "
                         "sd1.5, sdxl, sd3.5, flux.1-dev, flux.1-kontext, flux.2-klein, qwen-image, qwen-image-edit, "
                         "qwen-image-edit-plus (default: all)")
    dp.add_argument("--families", action="store_true",
                    help="make one tiny random pipeline per image model family under <state_dir>/models/families "
                         "instead (their images are noise; models.families.toml serves them)")
    dp.add_argument("--config", default=argparse.SUPPRESS,
                    help="registry whose state_dir holds the models (default: $HUB_CONFIG, else models.toml)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hub` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as err:
        print(f"hub: {err.message}", file=sys.stderr)
        return 1
    except (CLIError, HubError) as err:
        print(f"hub: {err}", file=sys.stderr)
        return 1
    except AdminError as err:  # the hub's own message; its first line unless --verbose
        msg = str(err)
        print(f"hub: {msg if args.verbose else msg.splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
