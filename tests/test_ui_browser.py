"""The web app in a real Chromium (Debian's, driven by playwright), served by `hub serve` with the test responder.

Screenshots go to artifacts/screenshots/ (CI keeps them).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT, require, responder_command

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("HUB_CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "artifacts" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
# The Image tab's note is the picked model's registry description: the demo's own, which warns of random weights.
NOISE = tomllib.loads((ROOT / "models.demo.toml").read_text())["models"]["tiny-sd"]["description"]
ECHO = "test responder: echoes your message"
REGISTRY = f"""
[hub]
memory_budget_gb = 8

[models.echo]
type = "text"
engine = "command"
memory_gb = 3
description = {json.dumps(ECHO)}
[models.echo.args]
command = {responder_command("--start-delay", "2", "--chunk-delay", "0.15")}

[models.tiny-sd]
type = "image"
engine = "command"
memory_gb = 2
description = {json.dumps(NOISE)}
[models.tiny-sd.args]
command = {responder_command()}

[models.broken]
type = "text"
engine = "command"
[models.broken.args]
command = {responder_command("--fail-start")}
"""
# Records what the Image tab's status line and results gallery show while an image streams in.
WATCH_IMAGE = """() => {
  window.__steps = []; window.__previews = 0;
  const status = document.querySelector('#hub-image-status');
  const results = document.querySelector('#hub-results');
  new MutationObserver(() => window.__steps.push(status.innerText.trim()))
    .observe(status, {subtree: true, childList: true, characterData: true});
  new MutationObserver(() => { if (/preview \\d/.test(results.innerText)) window.__previews += 1; })
    .observe(results, {subtree: true, childList: true, characterData: true});
}"""
# Records what the X/Y/Z plot's bars say while it runs.
WATCH_PLOT = """() => {
  window.__bars = [];
  const bars = document.querySelector('#hub-plot-progress');
  new MutationObserver(() => window.__bars.push(bars.innerText.trim()))
    .observe(bars, {subtree: true, childList: true, characterData: true});
}"""
# Records every text the last chat bubble shows, so the test can see the reply grow (streaming), not just its end.
WATCH_CHAT = """() => {
  window.__seen = [];
  const root = document.querySelector('#hub-chat');
  new MutationObserver(() => {
    const bots = root.querySelectorAll('.message.bot, [data-testid="bot"]');
    if (bots.length) window.__seen.push(bots[bots.length - 1].innerText.trim());
  }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture
def browser():
    require(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: run scripts/system-deps.sh (apt chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "python playwright is missing: pip install -e '.[test]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def open_app(browser, url: str, width: int, height: int):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("() => document.querySelector('#hub-chat-model input')?.value === 'echo'")
    return page, errors


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_chat_image_edit_models_in_a_browser(browser, hub_factory, tmp_path):
    hub = hub_factory(REGISTRY, ui=True)
    page, errors = open_app(browser, hub.url + "/", 1280, 900)
    page.locator("#hub-chat-note").get_by_text(ECHO).wait_for()
    shot(page, "01-chat-empty")

    # chat: a cold model shows "starting echo... Ns", then the reply streams in word by word
    page.evaluate(WATCH_CHAT)
    box = page.locator("#hub-message textarea")
    box.fill("hello from a real browser over the hub")
    box.press("Enter")
    page.get_by_text("starting echo...").first.wait_for()
    shot(page, "02-chat-starting")
    page.get_by_text("echo: hello from a real browser over the hub").wait_for()
    shot(page, "03-chat-reply")
    seen = page.evaluate("window.__seen")
    partial = [s for s in seen if s.startswith("echo:") and s != "echo: hello from a real browser over the hub"]
    assert partial, f"the reply never showed partially (not streamed): {seen[-5:]}"
    assert any("starting echo..." in s for s in seen)

    # second turn keeps the history
    box.fill("and again")
    box.press("Enter")
    page.get_by_text("echo: and again").wait_for()
    assert page.locator("#hub-chat").get_by_text("echo: hello from a real browser over the hub").count() == 1

    # an attached image goes to the model as an image_url part (the responder reports what it decoded)
    from PIL import Image

    pic = tmp_path / "cat.png"
    Image.new("RGB", (16, 12), "orange").save(pic)
    page.locator("#hub-message input[type=file]").set_input_files(str(pic))
    page.locator("#hub-message").get_by_role("img").first.wait_for()
    box.fill("what is in this picture?")
    shot(page, "03b-chat-attachment")
    box.press("Enter")
    page.get_by_text(f"echo: what is in this picture? [image/png {pic.stat().st_size} bytes]").wait_for()
    page.locator("#hub-chat img").first.wait_for()  # the picture shows in the conversation
    shot(page, "03c-chat-image-reply")

    # image: the picked model's note (its registry description), generate -> gallery
    tab(page, "Image")
    page.wait_for_function("() => document.querySelector('#hub-image-model input')?.value === 'tiny-sd'")
    note = page.locator("#hub-image-note")
    note.get_by_text("RANDOM weights").wait_for()
    assert note.inner_text().strip() == NOISE and "noise" in NOISE
    page.locator("#hub-prompt textarea").fill("a green square on a terminal")
    page.evaluate(WATCH_IMAGE)
    page.locator("#hub-generate").click()
    page.get_by_text("1 image(s) from tiny-sd").wait_for()
    steps = [t for t in page.evaluate("window.__steps") if ": step " in t]
    assert len(set(steps)) >= 3 and "step 1/" in steps[0], steps  # the counter moved
    assert page.evaluate("window.__previews") >= 1, "no preview showed before the image"
    page.locator("#hub-results img").first.wait_for()
    shot(page, "04-image-generated")

    # edit: the last result goes into the editor ("edit again"), an instruction -> a new result
    page.locator("#hub-edit-again").click()
    page.locator("#hub-editor canvas").first.wait_for()
    page.wait_for_timeout(500)
    page.locator("#hub-instruction textarea").fill("make it blue")
    page.locator("#hub-edit").click()
    page.get_by_text("1 image(s) edited by tiny-sd").wait_for()
    page.wait_for_function("() => document.querySelectorAll('#hub-history img').length >= 2")
    shot(page, "05-image-edited")

    # models: states in the table, the budget bar, a failed model's logs
    hub.cli("up", "broken")  # fails: the UI shows its log tail
    tab(page, "Models")
    table = page.locator("#hub-models")
    page.wait_for_function(
        "() => /echo[\\s\\S]*ready/.test(document.querySelector('#hub-models')?.innerText || '')")
    text = table.inner_text()
    assert "tiny-sd" in text and "failed" in text
    page.get_by_text("local: 5 / 8 GB").wait_for()
    page.wait_for_function(
        "() => (document.querySelector('#hub-logs textarea')?.value || '').includes('simulated start failure')")
    shot(page, "06-models")

    # unload from the page: the table follows (auto-refresh)
    page.locator("#hub-admin-model input").click()
    page.get_by_role("option", name="echo").click()
    page.locator("#hub-unload").click()
    page.get_by_text("echo: stopped").wait_for()
    assert hub.models()["echo"]["state"] == "stopped"
    assert not errors, errors

    # phone width: nothing wider than the screen
    phone, errors = open_app(browser, hub.url + "/", 390, 844)
    shot(phone, "07-phone-chat")
    tab(phone, "Models")
    phone.wait_for_function("() => /tiny-sd/.test(document.querySelector('#hub-models')?.innerText || '')")
    shot(phone, "08-phone-models")
    tab(phone, "Image")
    shot(phone, "09-phone-image")
    overflow = phone.evaluate("() => document.documentElement.scrollWidth")
    assert overflow <= 390, f"the page is {overflow}px wide on a 390px screen"
    assert not errors, errors


def test_demo_image_tab_streams_and_makes_an_xyz_plot(browser, hub_factory):
    """The real demo image model (tiny-sd on the diffusers engine): the form shows its own size and steps, and the
    first generate from a fresh page shows previews and a moving step counter, then the image, in seconds. Then an
    X/Y plot of seeds x steps: its bars move (cells, and each cell's steps), the labelled grid appears with its cells,
    and the Runs tab opens it."""
    from tests.conftest import DEMO_MODELS, ENVS_DIR

    require((ENVS_DIR / "diffusers" / "bin" / "python").exists(), "no diffusers engine environment")
    require((DEMO_MODELS / "tiny-sd").exists(), f"no demo model in {DEMO_MODELS}: run `hub demo prepare`")
    demo = tomllib.loads((ROOT / "models.demo.toml").read_text())["models"]["tiny-sd"]
    args = "\n".join(f"{k} = {json.dumps(v)}" for k, v in demo["args"].items())
    registry = REGISTRY.split("[models.tiny-sd]")[0] + (
        f'[models.tiny-sd]\ntype = "image"\nengine = "diffusers"\nsource = {json.dumps(str(DEMO_MODELS / "tiny-sd"))}\n'
        f"memory_gb = 1\ndescription = {json.dumps(NOISE)}\n[models.tiny-sd.args]\n{args}\n")
    hub = hub_factory(registry, ui=True)
    page, errors = open_app(browser, hub.url + "/", 1280, 900)
    tab(page, "Image")
    page.wait_for_function("() => document.querySelector('#hub-image-model input')?.value === 'tiny-sd'")
    size = demo["args"]["default_size"]
    page.wait_for_function(f"() => document.querySelector('#hub-size input')?.value === '{size}'")
    page.wait_for_function(f"() => document.querySelector('#hub-steps input[type=number]')?.value === "
                           f"'{demo['args']['default_steps']}'")
    page.locator("#hub-prompt textarea").fill("a lighthouse at dusk")
    page.evaluate(WATCH_IMAGE)
    page.locator("#hub-generate").click()
    page.get_by_text("1 image(s) from tiny-sd").wait_for(timeout=120_000)
    shot(page, "10-demo-image-streamed")
    seen = [t for t in page.evaluate("window.__steps") if ": step " in t]
    assert any("step 1/" in t for t in seen) and len(set(seen)) >= 2, seen
    assert page.evaluate("window.__previews") >= 1, "no preview before the image"

    # an X/Y plot over the same form: seed 1-3 x steps 2, 4
    page.get_by_text("X/Y/Z plot").first.click()
    for axis, kind, values in (("x", "seed", "1-3"), ("y", "steps", "2, 4")):
        page.locator(f"#hub-plot-{axis}-kind input").click()
        page.locator(f"#hub-plot-{axis}-kind").get_by_role("option", name=kind, exact=True).click()
        page.locator(f"#hub-plot-{axis}-values textarea").fill(values)
    page.locator("#hub-plot-make").click()
    page.locator("#hub-plot-progress").wait_for(state="attached")  # the plot's view shows once it starts
    page.evaluate(WATCH_PLOT)
    page.get_by_text("6 of 6 cells").wait_for(timeout=120_000)
    page.locator("#hub-plot-grid img").wait_for()
    shot(page, "11-demo-xyz-plot")
    bars = page.evaluate("window.__bars")
    cells = {int(m) for b in bars for m in re.findall(r"cell (\d) of 6", b)}
    assert len(cells) >= 2, f"the cells bar moved: {bars[-5:]}"
    assert any(re.search(r"this cell: step \d/[24]", b) for b in bars), "each cell's steps showed"
    grid = page.evaluate("() => { const i = document.querySelector('#hub-plot-grid img');"
                         " return [i.naturalWidth, i.naturalHeight]; }")
    assert grid[0] > 3 * 64 and grid[1] > 2 * 64, f"a labelled 3x2 grid of 64px cells: {grid}"
    thumbs = page.locator("#hub-plot-cells .thumbnail-item, #hub-plot-cells button img")
    page.wait_for_function("() => document.querySelectorAll('#hub-plot-cells img').length >= 6")
    thumbs.first.click()  # a cell opens on its own
    page.get_by_text("seed: 1, steps: 2").first.wait_for()
    shot(page, "12-demo-xyz-cell")
    run_id = re.search(r"kept as run ([\w.-]+)", page.locator("#hub-plot-progress").inner_text()).group(1)

    # the Runs tab lists the plot and opens it: the grid, the table, the line for a notebook
    tab(page, "Runs")
    page.wait_for_function(f"() => (document.querySelector('#hub-runs-list')?.innerText || '').includes('{run_id}')")
    page.locator("#hub-runs-summary").get_by_text(f"lab.load('{run_id}')").wait_for()
    page.locator("#hub-runs-grid img").wait_for()
    shot(page, "13-runs")
    assert not errors, errors


# A second text model for the Compare tab, before the image model so the picker starts with echo and parrot.
PARROT = f"""[models.parrot]
type = "text"
engine = "command"
memory_gb = 2
[models.parrot.args]
command = {responder_command("--chunk-delay", "0.12")}

"""
# Records every text the answer panes A and B show, so the test can see both grow (streaming), not just their ends.
WATCH_COMPARE = """() => {
  window.__panes = {a: [], b: []};
  for (const pos of ['a', 'b']) {
    const pane = document.querySelector(`#hub-compare-answer-${pos}`);
    new MutationObserver(() => window.__panes[pos].push(pane.innerText.trim()))
      .observe(pane, {subtree: true, childList: true, characterData: true});
  }
}"""


def test_compare_streams_side_by_side_then_a_blind_vote_moves_the_standings(browser, hub_factory):
    hub = hub_factory(REGISTRY.replace("[models.tiny-sd]", PARROT + "[models.tiny-sd]"), ui=True)
    page, errors = open_app(browser, hub.url + "/", 1280, 900)
    tab(page, "Compare")
    picker = "document.querySelector('#hub-compare-models')?.innerText || ''"
    page.wait_for_function(f"() => /echo/.test({picker}) && /parrot/.test({picker})")  # the first two text models
    standings = page.locator("#hub-compare-standings")
    assert "echo" not in standings.inner_text(), "no vote yet"
    shot(page, "2x-compare-empty")

    # two models at once: both answers grow side by side, then each shows its speed
    prompt = "compare these two answers word by word please"
    answer = f"echo: {prompt}"
    page.evaluate(WATCH_COMPARE)
    page.locator("#hub-compare-prompt textarea").fill(prompt)
    page.locator("#hub-compare-send").click()
    page.get_by_text("starting echo...").first.wait_for()
    shot(page, "2x-compare-starting")
    for pos in "ab":
        page.locator(f"#hub-compare-answer-{pos}").get_by_text(answer).wait_for()
    for pos, model in (("a", "echo"), ("b", "parrot")):
        assert page.locator(f"#hub-compare-head-{pos}").inner_text().strip() == f"{pos.upper()} · {model}"
        page.wait_for_function(f"() => /first token [0-9.]+s · [0-9.]+ tok\\/s · 9 tokens/.test("
                               f"document.querySelector('#hub-compare-stats-{pos}').innerText)")
    page.get_by_text("which is better? vote below").wait_for()
    shot(page, "2x-compare-answers")
    seen = page.evaluate("window.__panes")
    for pos in "ab":
        partial = {s for s in seen[pos] if s.startswith("echo:") and s != answer}
        assert len(partial) >= 2, f"pane {pos} never showed a partial answer (not streamed): {seen[pos][-5:]}"
    assert page.locator("#hub-compare-col-c").is_hidden() and page.locator("#hub-compare-col-d").is_hidden()

    # blind: the names are hidden until the vote, then revealed, and the standings count the vote
    page.locator("#hub-compare-blind input").check()
    page.locator("#hub-compare-prompt textarea").fill("who am I talking to")
    page.locator("#hub-compare-send").click()
    page.wait_for_function("() => /round 2: .*which is better/.test("
                           "document.querySelector('#hub-compare-status').innerText)"
                           " && !document.querySelector('#hub-compare-vote-a').disabled")
    heads = [page.locator(f"#hub-compare-head-{pos}").inner_text().strip() for pos in "ab"]
    assert heads == ["model A", "model B"], heads
    assert "parrot" not in page.locator("#hub-compare-answers").inner_text()
    shot(page, "2x-compare-blind")
    page.locator("#hub-compare-vote-a").click()
    page.get_by_text("vote saved: A is better").wait_for()
    page.wait_for_function("() => /echo[\\s\\S]*parrot|parrot[\\s\\S]*echo/.test("
                           "document.querySelector('#hub-compare-standings').innerText)")
    heads = [page.locator(f"#hub-compare-head-{pos}").inner_text().strip() for pos in "ab"]
    assert sorted(h.split(" · ")[1] for h in heads) == ["echo", "parrot"], heads
    assert "100%" in standings.inner_text() and "0%" in standings.inner_text()
    assert page.locator("#hub-compare-vote-b").is_disabled(), "one vote per round"
    shot(page, "2x-compare-voted")
    assert not errors, errors

    # a phone: the columns stack, nothing is wider than the screen, the standings are there
    phone, errors = open_app(browser, hub.url + "/", 430, 900)
    tab(phone, "Compare")
    phone.wait_for_function("() => /parrot/.test(document.querySelector('#hub-compare-standings')?.innerText||'')")
    phone.locator("#hub-compare-prompt textarea").fill("short")
    phone.locator("#hub-compare-send").click()
    phone.locator("#hub-compare-answer-b").get_by_text("echo: short").wait_for()
    shot(phone, "2x-compare-phone")
    width = phone.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 430, f"the page is {width}px wide on a 430px screen"
    assert not errors, errors


def test_batches_tab_runs_a_batch_of_prompts(browser, hub_factory):
    """The Batches tab: three prompts for echo become a batch; its bar reaches 3/3 and the table says completed."""
    hub = hub_factory(REGISTRY.split("[models.tiny-sd]")[0], ui=True)
    page, errors = open_app(browser, hub.url + "/", 1280, 900)
    tab(page, "Batches")
    page.wait_for_function("() => document.querySelector('#hub-batch-model input')?.value === 'echo'")
    page.locator("#hub-batch-prompts textarea").fill("name a river\nname a mountain\nname a sea")
    page.locator("#hub-batch-submit").click()
    page.get_by_text(re.compile(r"batch_\w+: in_progress, 3 line\(s\)")).wait_for()
    page.wait_for_function("() => /batch_\\w+: 3\\/3 · completed/.test("
                           "document.querySelector('#hub-batch-progress')?.innerText || '')")
    page.wait_for_function("() => /completed/.test(document.querySelector('#hub-batch-list')?.innerText || '')")
    assert page.locator("#hub-batch-progress [role=progressbar]").first.get_attribute("aria-valuenow") == "3"
    page.locator("#hub-batch-details").get_by_text("3 completed, 0 failed of 3").wait_for()
    page.locator("#hub-batch-download").click()
    link = page.locator("#hub-batch-output a[download$='-output.jsonl']")
    link.wait_for()
    assert page.locator("#hub-batch-errors").is_hidden(), "no error file: none offered"
    shot(page, "14-batches")
    assert not errors, errors


def test_models_tab_pulls_a_model_with_a_moving_bar(browser, hub_factory, tmp_path):
    """The Models tab: "pull" on a model whose source is a repo of a local Hugging Face server (tests/hfserver.py,
    throttled) draws a bar whose value grows while the bytes arrive, and the model's row says downloading."""
    from tests.hfserver import FakeHub, tiny_checkpoint

    server = FakeHub()
    server.add_repo("org/pullme", {"main": tiny_checkpoint(tmp_path / "pullme", weights=3_000_000, bin_too=False)})
    server.throttle = 400_000
    server.start()
    try:
        registry = REGISTRY.split("[models.tiny-sd]")[0] + (
            '[models.pullme]\ntype = "text"\nengine = "vllm"\nsource = "org/pullme"\nmemory_gb = 1\n')
        hub = hub_factory(registry, ui=True, env={"HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(tmp_path / "cache")})
        page, errors = open_app(browser, hub.url + "/", 1280, 900)
        tab(page, "Models")
        picker = page.locator("#hub-admin-model input")
        picker.click()
        page.get_by_role("option", name="pullme").click()
        page.locator("#hub-pull").click()
        page.get_by_text(re.compile(r"pulling pullme: ")).first.wait_for()
        bar = page.locator('#hub-downloads [aria-label="download org/pullme"]')
        bar.wait_for()
        first = float(bar.get_attribute("aria-valuenow"))
        page.wait_for_function("(v) => parseFloat(document.querySelector("
                               "'#hub-downloads [aria-label=\"download org/pullme\"]')?.getAttribute('aria-valuenow')"
                               " || 0) > v", arg=first)
        page.locator("#hub-downloads").get_by_text(re.compile(r"pull pullme \(org/pullme\): [\d.]+/3\.0 MB")).wait_for()
        shot(page, "15-models-pull")
        page.locator("#hub-admin-status").get_by_text(re.compile(r"pullme: done, 3\.0 MB downloaded")).wait_for(
            timeout=60_000)
        page.wait_for_function("() => { const b = document.querySelector("
                               "'#hub-downloads [aria-label=\"download org/pullme\"]'); "
                               "return b && b.getAttribute('aria-valuenow') === b.getAttribute('aria-valuemax'); }")
        assert not errors, errors
    finally:
        server.stop()
