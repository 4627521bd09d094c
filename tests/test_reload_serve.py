"""Registry reload against a real `hub serve` whose models are the test responder (a real process per engine): add a
model, a live change, an engine change restarted once idle, `hub reload --restart`, a removal with a request in
flight, broken files kept out, SIGHUP and `hub serve --watch`. The tests share one hub and run in order; each
writes the whole registry it wants."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import HubProcess, start_hub, still_running, wait_for
from tests.helpers import client, text_model


class Lineup:
    """The hub under test and the model tables its registry file has now."""

    def __init__(self, hub: HubProcess, tmp: Path, tables: dict[str, str]) -> None:
        self.hub, self.tmp, self.tables = hub, tmp, tables
        self.head = hub.config.read_text().split("[models.", 1)[0]  # [hub]: its port and state dir

    def write(self, extra: str = "") -> None:
        self.hub.config.write_text(self.head + "".join(self.tables.values()) + extra)

    def hold(self, name: str) -> Path:
        """A hold file for the responder (--hold-file): its answers wait until the file exists."""
        return self.tmp / f"hold-{name}"


def held(lineup: Lineup, mid: str, *extra: str) -> str:
    return text_model(mid, "--hold-file", str(lineup.hold(mid)), *extra)


@pytest.fixture(scope="module")
def lineup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lineup]:
    tmp = tmp_path_factory.mktemp("reload")
    tables = {"echo": text_model("echo")}
    hub = start_hub(tmp, "[hub]\n" + "".join(tables.values()))
    ln = Lineup(hub, tmp, tables)
    for mid in ("held", "now", "gone"):
        ln.tables[mid] = held(ln, mid)
    ln.write()
    r = hub.cli("reload")
    assert r.returncode == 0 and r.stdout.count(": added") == 3, r.stdout + r.stderr
    yield ln
    hub.stop_leaving_nothing()


def chat(hub: HubProcess, model: str) -> str:
    r = client(hub).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    return r.choices[0].message.content or ""


def in_flight(hub: HubProcess, model: str) -> tuple[threading.Thread, list]:
    """A chat request sent in a thread; its answer (or error) lands in the list."""
    out: list = []

    def run() -> None:
        try:
            out.append(chat(hub, model))
        except Exception as err:  # the test asserts on what came back
            out.append(err)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_for(lambda: hub.models()[model]["in_flight"] >= 1, f"a request to {model} in flight")
    return t, out


def pid(hub: HubProcess, model: str) -> int | None:
    return (hub.models()[model].get("process") or {}).get("pid")


def test_added_model_answers(lineup: Lineup) -> None:
    hub = lineup.hub
    lineup.tables["added"] = text_model("added")
    lineup.write()
    r = hub.cli("reload")
    assert r.returncode == 0 and "added: added" in r.stdout, r.stdout + r.stderr
    assert "added" in {m["id"] for m in httpx.get(hub.v1 + "/models").json()["data"]}
    assert chat(hub, "added") == "echo: hi"


def test_live_change_keeps_the_engine(lineup: Lineup) -> None:
    hub = lineup.hub
    assert chat(hub, "echo") == "echo: hi"
    before, starts = pid(hub, "echo"), hub.models()["echo"]["starts"]
    lineup.tables["echo"] = text_model("echo", more='ttl = "10m"\nmax_concurrency = 2\ndescription = "live"')
    lineup.write()
    report = httpx.post(hub.url + "/hub/reload", json={}, timeout=60).json()
    change = next(c for c in report["changes"] if c["model"] == "echo")
    assert change["change"] == "updated" and set(change["fields"]) == {"ttl", "max_concurrency", "description"}
    m = hub.models()["echo"]
    assert m["max_concurrency"] == 2 and m["ttl"] == 600 and m["pending"] is None
    assert pid(hub, "echo") == before and m["starts"] == starts and m["state"] == "ready"
    assert chat(hub, "echo") == "echo: hi"


def test_engine_change_restarts_once_idle(lineup: Lineup) -> None:
    hub = lineup.hub
    thread, answer = in_flight(hub, "held")
    old = pid(hub, "held")
    engine = psutil.Process(old)
    lineup.tables["held"] = held(lineup, "held", "--model", "v2")
    lineup.write()
    r = hub.cli("reload")
    assert r.returncode == 0 and "held: stale (args)" in r.stdout, r.stdout
    m = hub.models()["held"]
    assert m["pending"] == "restarts when idle (changed: args)" and m["state"] == "ready" and pid(hub, "held") == old
    ps = hub.cli("ps")
    assert "restarts when idle (changed: args)" in ps.stdout, ps.stdout
    lineup.hold("held").touch()  # its request ends: the model is idle, the restart follows
    thread.join(60)
    assert answer == ["echo: hi"]
    wait_for(lambda: pid(hub, "held") not in (None, old) and hub.models()["held"]["state"] == "ready",
             "held restarted with its new engine")
    assert hub.models()["held"]["pending"] is None and hub.models()["held"]["starts"] == 2
    assert "v2" in psutil.Process(pid(hub, "held")).cmdline()
    assert not still_running([engine], 30), "the old engine still runs"


def test_reload_restart_drains_then_restarts(lineup: Lineup) -> None:
    hub = lineup.hub
    thread, answer = in_flight(hub, "now")
    old = pid(hub, "now")
    lineup.tables["now"] = held(lineup, "now", "--model", "v3")
    lineup.write()
    r = hub.cli("reload", "--restart")
    assert r.returncode == 0 and "now: restarting (args)" in r.stdout, r.stdout
    assert hub.models()["now"]["pending"] == "restarting after reload"
    out: list = []
    waiter = threading.Thread(target=lambda: out.append(chat(hub, "now")), daemon=True)
    waiter.start()
    wait_for(lambda: hub.models()["now"]["queued"] == 1, "a second request waits for the restart")
    assert pid(hub, "now") == old  # the old engine finishes its request first
    lineup.hold("now").touch()
    thread.join(60)
    waiter.join(60)
    assert answer == ["echo: hi"] and out == ["echo: hi"]
    m = hub.models()["now"]
    assert m["starts"] == 2 and pid(hub, "now") != old and "v3" in psutil.Process(pid(hub, "now")).cmdline()


def test_removed_model_finishes_its_request_then_stops(lineup: Lineup) -> None:
    hub = lineup.hub
    thread, answer = in_flight(hub, "gone")
    engine = psutil.Process(pid(hub, "gone"))
    del lineup.tables["gone"]
    lineup.write()
    r = httpx.post(hub.url + "/hub/reload", json={"restart": False}, timeout=60)
    assert r.status_code == 200 and {"model": "gone", "change": "removing"}.items() <= next(
        c for c in r.json()["changes"] if c["model"] == "gone").items()
    assert hub.models()["gone"]["pending"] == "removing: draining 1 request(s)"
    refused = httpx.post(hub.v1 + "/chat/completions", json={"model": "gone", "messages": [
        {"role": "user", "content": "hi"}]}, timeout=30)
    assert refused.status_code == 404 and "removed from the registry" in refused.json()["error"]["message"]
    assert "gone" not in {m["id"] for m in httpx.get(hub.v1 + "/models").json()["data"]}
    lineup.hold("gone").touch()
    thread.join(60)
    assert answer == ["echo: hi"]
    wait_for(lambda: "gone" not in hub.models(), "the removed model's slot gone")
    assert not still_running([engine], 30), "the removed model's engine still runs"


@pytest.mark.parametrize("broken, says", [
    ("[models.echo\n", "invalid TOML"),
    ('[models.bad]\ntype = "text"\nengine = "command"\ncolour = "red"\n[models.bad.args]\ncommand = ["x"]\n',
     "models.bad.colour: unknown key"),
])
def test_broken_file_changes_nothing(lineup: Lineup, broken: str, says: str) -> None:
    hub = lineup.hub
    before = {mid: (m["state"], pid(hub, mid), m["starts"]) for mid, m in hub.models().items()}
    lineup.write(broken)
    r = hub.cli("reload")
    assert r.returncode == 1 and says in r.stderr and "nothing changed" in r.stderr, r.stderr
    api = httpx.post(hub.url + "/hub/reload", timeout=30)
    assert api.status_code == 400 and says in api.json()["error"]["message"]
    assert {mid: (m["state"], pid(hub, mid), m["starts"]) for mid, m in hub.models().items()} == before
    assert says in hub.log.read_text()
    lineup.write()


def test_sighup_reloads(lineup: Lineup) -> None:
    hub = lineup.hub
    lineup.tables["hup"] = text_model("hup")
    lineup.write()
    os.kill(hub.proc.pid, signal.SIGHUP)
    wait_for(lambda: "hup" in hub.models(), "the model SIGHUP added")
    assert chat(hub, "hup") == "echo: hi" and "reload: hup: added" in hub.log.read_text()


def test_watch_picks_up_an_edit(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, "[hub]\n" + text_model("echo"), args=("--watch",))
    try:
        text = hub.config.read_text()
        hub.config.write_text(text + text_model("watched"))
        wait_for(lambda: "watched" in hub.models(), "--watch adding the model", timeout=60)
        assert chat(hub, "watched") == "echo: hi"
        hub.config.write_text(text + "[models.watched\n")  # a broken save: logged, the old registry kept
        wait_for(lambda: "invalid TOML" in hub.log.read_text(), "the broken save logged", timeout=60)
        assert set(hub.models()) == {"echo", "watched"}
        hub.config.write_text(text + text_model("later"))  # a later good save applies
        wait_for(lambda: set(hub.models()) == {"echo", "later"}, "the good save applied", timeout=60)
    finally:
        hub.stop_leaving_nothing()
