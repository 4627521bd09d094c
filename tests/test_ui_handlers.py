"""The web app's handlers, called directly against a real `hub serve` with the test responder as its engines."""

from __future__ import annotations

import io
import itertools
import re
import time

import gradio as gr
import httpx
import pytest
from PIL import Image

from hub.config import Registry
from hub.registry import load_registry
from hub.ui import chat, common, images, model_notes
from hub.ui import models as models_tab
from hub.ui.app import build_ui
from hub.ui.clients import make_clients
from tests.conftest import ROOT, responder_command

REGISTRY = f"""
[hub]
api_key_env = "HUB_UI_TEST_KEY"
memory_budget_gb = 10

[models.echo]
type = "text"
engine = "command"
memory_gb = 4
[models.echo.args]
command = {responder_command("--start-delay", "1.5")}

[models.tiny-sd]
type = "image"
engine = "command"
memory_gb = 2
[models.tiny-sd.args]
command = {responder_command()}

[models.broken]
type = "text"
engine = "command"
[models.broken.args]
command = {responder_command("--fail-start")}
"""
KEY = "ui-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture
def hub(hub_factory):
    return hub_factory(REGISTRY, env={"HUB_UI_TEST_KEY": KEY})


@pytest.fixture
def clients(hub):
    client, admin = make_clients(hub.url, KEY)
    yield client, admin
    admin.close()


def last(gen):
    """Run a handler generator to its end; return every value it yielded."""
    return list(gen)


def test_clients_send_the_api_key(hub):
    client, admin = make_clients(hub.url, None)
    with pytest.raises(gr.Error, match=r"API key (missing|wrong)"):
        common.model_choices(client)
    with pytest.raises(gr.Error, match="API key missing"):
        models_tab.refresh_models(admin)
    client, admin = make_clients(hub.url, KEY)
    assert common.model_choices(client) == {"text": ["echo", "broken"], "image": ["tiny-sd"]}


def test_chat_streams_with_a_starting_status_then_tokens(clients, hub):
    client, admin = clients
    _, history = chat.add_user_message("hello there friend", [])
    steps = [[dict(m) for m in hist] for hist in
             chat.chat_reply(client, admin, "echo", history, system="be brief", temperature=0, max_tokens=32, poll=0.2)]
    replies = [s[-1]["content"] for s in steps]
    assert any(r.startswith("starting echo... ") and r.endswith("s") for r in replies), replies
    tokens = [r for r in replies if r.startswith("echo")]
    assert tokens[-1] == "echo: hello there friend"
    assert len(tokens) >= 3, "the reply must arrive in several chunks (streamed), not at once"
    assert all(b.startswith(a) for a, b in itertools.pairwise(tokens))

    # multi-turn: the whole history goes to the model, the answer is appended
    _, history = chat.add_user_message("second turn", steps[-1])
    final = last(chat.chat_reply(client, admin, "echo", history, poll=0.2))[-1]
    assert [m["role"] for m in final] == ["user", "assistant", "user", "assistant"]
    assert final[-1]["content"] == "echo: second turn"


def test_chat_errors_are_actionable(clients):
    client, admin = clients
    with pytest.raises(gr.Error, match="pick a text model"):
        last(chat.chat_reply(client, admin, None, [{"role": "user", "content": "hi"}]))
    with pytest.raises(gr.Error, match="type a message"):
        chat.add_user_message("   ", [])
    with pytest.raises(gr.Error, match=r"image model: use /v1/images"):
        last(chat.chat_reply(client, admin, "tiny-sd", [{"role": "user", "content": "hi"}], poll=0.2))
    with pytest.raises(gr.Error, match="broken") as err:
        last(chat.chat_reply(client, admin, "broken", [{"role": "user", "content": "hi"}], poll=0.2))
    assert "hub logs" in str(err.value) or "CUDA out of memory" in str(err.value)


def test_chat_sends_attached_images_as_data_uris(hub_factory, tmp_path):
    blind = (f'[models.blind]\ntype = "text"\nengine = "command"\n[models.blind.args]\n'
             f'command = {responder_command("--text-only")}\n')
    h = hub_factory(REGISTRY.replace("[models.broken]", blind + "\n[models.broken]"), env={"HUB_UI_TEST_KEY": KEY})
    client, admin = make_clients(h.url, KEY)
    pic = tmp_path / "pic.png"
    pic.write_bytes(png_of(Image.new("RGB", (8, 6), "red")))
    box, history = chat.add_user_message({"text": "what is this?", "files": [str(pic)]}, [])
    assert box is None and history[-1]["content"] == ["what is this?", {"path": str(pic)}]
    final = last(chat.chat_reply(client, admin, "echo", history, poll=0.2))[-1][-1]
    assert final["content"] == f"echo: what is this? [image/png {pic.stat().st_size} bytes]"
    # the same history as Gradio hands it back (normalised parts), with an image alone in a second turn
    turn2 = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                          {"type": "file", "file": {"path": str(pic)}}]},
             {"role": "assistant", "content": [{"type": "text", "text": final["content"]}]},
             {"role": "user", "content": [{"type": "file", "file": {"path": str(pic)}}]}]
    again = last(chat.chat_reply(client, admin, "echo", turn2, poll=0.2))[-1][-1]["content"]
    assert again == f"echo:  [image/png {pic.stat().st_size} bytes]"
    with pytest.raises(gr.Error, match=r"blind refused the images: blind is not a multimodal model \(pick a model"):
        last(chat.chat_reply(client, admin, "blind", history, poll=0.2))
    assert last(chat.chat_reply(client, admin, "blind", [{"role": "user", "content": "hi"}], poll=0.2))
    with pytest.raises(gr.Error, match="not an image"):
        chat.openai_content([{"path": str(tmp_path / "notes.txt")}])


def test_stop_closes_the_stream(clients, hub):
    client, admin = clients
    last(models_tab.load_model(admin, "echo", poll=0.2))
    words = " ".join(f"w{i}" for i in range(400))  # about 4 s of streaming at the responder's pace
    gen = chat.chat_reply(client, admin, "echo", [{"role": "user", "content": words}], poll=0.2)
    while not next(gen)[-1]["content"].startswith("echo"):
        pass
    assert hub.models(AUTH)["echo"]["in_flight"] == 1
    gen.close()  # what gradio's Stop does to a running generator
    deadline = time.monotonic() + 2
    while hub.models(AUTH)["echo"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub.models(AUTH)["echo"]["in_flight"] == 0, "Stop must end the request at the hub, not just in the page"


def png_of(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_generate_then_edit_then_edit_again(clients):
    client, admin = clients
    out = last(images.generate_images(client, admin, "tiny-sd", "a green square", negative="blurry", size="64x64",
                                 steps=4, guidance=5.0, seed=1, n=2, history=[], poll=0.2))
    # every status before the last says what is happening to this model, whatever state it was in: starting it, or
    # generating (with the seconds so far, or the step counter once the engine reports steps); preview rows skip it
    progress = re.compile(r"(starting tiny-sd\.\.\. \d+s|generating with tiny-sd(\.\.\. \d+s|: step \d+/\d+.*))")
    statuses = [o[0] for o in out[:-1] if isinstance(o[0], str)]
    assert all(progress.fullmatch(s) for s in statuses), statuses
    status, pics, history, last_img = out[-1]
    assert status.startswith("2 image(s) from tiny-sd")
    assert len(pics) == 2 and pics[0][0].size == (64, 64) and pics[0][0].getpixel((1, 1)) == (0, 200, 0)
    assert len(history) == 2

    # edit without a mask: image-to-image (the responder answers blue)
    editor = {"background": last_img, "layers": [], "composite": last_img}
    status, pics, history, edited = last(images.edit_image(client, admin, "tiny-sd", editor, "make it blue",
                                                      steps=4, seed=2, n=1, history=history, poll=0.2))[-1]
    assert "edited" in status and edited.getpixel((0, 0)) == (0, 0, 200)
    assert len(history) == 3

    # edit again with a painted layer: a mask is sent (the responder answers red)
    again = images.edit_again(edited)
    layer = Image.new("RGBA", again.size, (0, 0, 0, 0))
    layer.paste((255, 176, 0, 255), (0, 0, 16, 16))
    editor = {"background": again, "layers": [layer], "composite": again}
    status, pics, history, inpainted = last(images.edit_image(client, admin, "tiny-sd", editor, "paint it red",
                                                         history=history, poll=0.2))[-1]
    assert "inpainted" in status and inpainted.getpixel((0, 0)) == (200, 0, 0)
    assert len(history) == 4


def test_generate_streams_previews_and_steps_then_stop_ends_it(clients, hub):
    client, admin = clients
    out = last(images.generate_images(client, admin, "tiny-sd", "a square", size="64x64", steps=6, poll=0.2))
    steps = [o[0] for o in out if isinstance(o[0], str) and ": step " in o[0]]
    assert steps[0].startswith("generating with tiny-sd: step 1/6") and "s left" in steps[0]
    assert steps[-1].startswith("generating with tiny-sd: step 6/6")
    previews = [o[1] for o in out if isinstance(o[1], list)][:-1]
    assert len(previews) == 2 and previews[0][0][1] == "preview 1" and previews[0][0][0].size == (64, 64)
    assert out[-1][0].startswith("1 image(s) from tiny-sd") and out[-1][1][0][0].getpixel((0, 0)) == (0, 200, 0)
    # an edit streams too
    editor = {"background": Image.new("RGB", (32, 32)), "layers": [], "composite": None}
    out = last(images.edit_image(client, admin, "tiny-sd", editor, "blue", steps=3, poll=0.2))
    assert any(isinstance(o[0], str) and o[0].startswith("editing with tiny-sd: step 3/3") for o in out)
    # stop: closing the handler closes the stream at the hub
    gen = images.generate_images(client, admin, "tiny-sd", "slow", size="64x64", steps=400, poll=0.2)
    while ": step " not in str(next(gen)[0]):
        pass
    assert hub.models(AUTH)["tiny-sd"]["in_flight"] == 1
    gen.close()
    deadline = time.monotonic() + 3
    while hub.models(AUTH)["tiny-sd"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub.models(AUTH)["tiny-sd"]["in_flight"] == 0


def test_form_starts_from_the_models_defaults():
    size, steps, n, guidance = images.form_defaults({"default_size": "128x128", "default_steps": 4, "max_size": 512,
                                                     "max_n": 2, "default_guidance": 1.5})
    assert guidance.value == 1.5
    assert size.value == "128x128" and size.choices[0] == ("128x128", "128x128")
    assert all(max(int(x) for x in c[0].split("x")) <= 512 for c in size.choices)
    assert steps.value == 4 and n.maximum == 2
    # guidance 0 sends none (the model's own): a pipeline without guidance_scale refuses the argument with a 400
    assert "guidance_scale" not in images._extras("", 4, 0.0, None)
    assert images._extras("", 4, 3.5, None)["guidance_scale"] == 3.5


def test_mask_is_transparent_where_painted():
    layer = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    layer.putpixel((2, 3), (255, 0, 0, 255))
    mask = images.mask_from_layers([layer], (8, 8))
    assert mask.getpixel((2, 3))[3] == 0 and mask.getpixel((0, 0))[3] == 255
    assert images.mask_from_layers([Image.new("RGBA", (8, 8), (0, 0, 0, 0))], (8, 8)) is None


def test_image_errors_are_actionable(clients):
    client, admin = clients
    with pytest.raises(gr.Error, match="write a prompt"):
        last(images.generate_images(client, admin, "tiny-sd", " "))
    with pytest.raises(gr.Error, match=r"text model: use /v1/chat"):
        last(images.generate_images(client, admin, "echo", "x", size="64x64", poll=0.2))
    with pytest.raises(gr.Error, match="upload an image"):
        last(images.edit_image(client, admin, "tiny-sd", {"background": None, "layers": [], "composite": None}, "x"))
    with pytest.raises(gr.Error, match="generate or edit an image first"):
        images.edit_again(None)


def test_notes_are_the_registry_descriptions():
    args = {"command": ["x", "{port}"]}
    reg = Registry.model_validate({"models": {
        "tiny-sd": {"type": "image", "engine": "command", "args": args, "description": "pure noise"},
        "chat": {"type": "text", "engine": "command", "args": args, "description": "a chat model"},
        "real": {"type": "image", "engine": "diffusers", "source": "Qwen/Qwen-Image-Edit"}}})
    notes = model_notes(reg)
    assert notes == {"tiny-sd": "pure noise", "chat": "a chat model"}
    assert common.model_note("tiny-sd", notes) == "pure noise" and common.model_note("chat", notes) == "a chat model"
    assert common.model_note("real", notes) == "" and common.model_note(None, notes) == ""
    assert common.model_note("tiny-sd", None) == "", "no note comes from a model's name"
    assert common.note_update("real", notes).visible is False and common.note_update("chat", notes).visible is True

    # the demo registry says its random-weights pipeline makes noise: that is the note the Image tab shows
    demo = model_notes(load_registry(ROOT / "models.demo.toml"))
    assert "RANDOM weights" in demo["tiny-sd"] and "noise" in demo["tiny-sd"] and "smollm2" in demo


async def test_a_reload_shows_in_the_models_table_and_the_notes():
    """What a registry reload leaves pending shows in the state column; the notes follow the new descriptions."""
    from fastapi import FastAPI

    from hub.manager import Manager
    from hub.registry import parse_registry
    from hub.ui import mount_ui

    args = {"command": ["x", "{port}"]}
    reg = parse_registry({"models": {"a": {"type": "text", "engine": "command", "args": args, "description": "old"}}})
    app = FastAPI()
    app.state.manager = manager = Manager(reg)
    mount_ui(app, reg)
    entry = {"id": "a", "state": "ready", "type": "text", "engine": "command", "pending": "restarting after reload"}
    assert models_tab.model_rows({"data": [entry]})[0][1] == "ready: restarting after reload"
    assert models_tab.model_rows({"data": [{**entry, "pending": None}]})[0][1] == "ready"
    new = parse_registry({"models": {"a": {"type": "text", "engine": "command", "args": args, "description": "new"},
                                     "b": {"type": "text", "engine": "command", "args": args, "description": "b"}}})
    await manager.reload(new)
    assert app.state.notes == {"a": "new", "b": "b"}  # the very dict the tabs were built with
    await manager.shutdown()


def test_models_table_budget_load_unload_and_failed_logs(clients, hub):
    _, admin = clients
    rows, budget, logs, downloads = models_tab.refresh_models(admin)
    assert [r[0] for r in rows] == ["echo", "tiny-sd", "broken"]
    assert {r[1] for r in rows} == {"stopped"} and rows[0][5] == "4 GB"
    assert "0 / 10 GB" in budget and "no failed model" in logs and downloads == ""

    statuses = last(models_tab.load_model(admin, "echo", poll=0.2))
    assert statuses[0].startswith("starting echo... ") and statuses[-1] == "echo: ready"
    rows, budget, _, _ = models_tab.refresh_models(admin, "echo")
    assert rows[0][1] == "ready" and "4 / 10 GB (40%)" in budget and 'aria-valuenow="4"' in budget
    assert models_tab.unload_model(admin, "echo") == "echo: stopped"

    with pytest.raises(gr.Error, match="broken"):
        last(models_tab.load_model(admin, "broken", poll=0.2))
    rows, _, logs, _ = models_tab.refresh_models(admin)
    assert rows[2][1] == "failed"
    assert logs.startswith("broken failed:") and "CUDA out of memory (simulated start failure)" in logs


def test_build_ui_against_a_hub(clients, hub):
    client, admin = clients
    demo = build_ui(client, admin)
    ids = {c.elem_id for c in demo.blocks.values() if getattr(c, "elem_id", None)}
    assert {"hub-chat", "hub-chat-note", "hub-results", "hub-editor", "hub-image-note", "hub-models", "hub-budget",
            "hub-logs"} <= ids


def test_web_app_asks_for_the_key_when_the_hub_has_one(hub_factory):
    h2 = hub_factory(REGISTRY, env={"HUB_UI_TEST_KEY": KEY}, ui=True)
    cfg = httpx.get(h2.url + "/config", timeout=10)
    assert cfg.status_code == 401 or cfg.json().get("auth_required") is True
    r = httpx.post(h2.url + "/login", data={"username": "me", "password": "wrong"}, timeout=10)
    assert r.status_code in (400, 401)
    r = httpx.post(h2.url + "/login", data={"username": "me", "password": KEY}, timeout=10)
    assert r.status_code == 200


def test_a_failed_pulls_error_is_shown_as_text_not_html() -> None:
    """A pull's error quotes the hub repo server's message (EntryNotFound ...): shown as text, never run."""
    job = {"repo": "org/m", "models": ["m"], "status": "failed", "bytes_total": 10, "bytes_done": 1,
           "error": 'a file of org/m@main is missing: <img src=x onerror="alert(1)">', "finished_at": time.time()}
    out = models_tab.downloads_html([job])
    assert "<img" not in out and "&lt;img src=x" in out, out
