"""OpenAI's Batch API through a real `hub serve` with the official openai SDK: files and batches in OpenAI's shapes,
chat and image batches run to the end, bad files and lines refused with their own errors, cancel and expiry."""

from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest

from tests.conftest import start_hub, wait_for
from tests.helpers import client, image_model, text_model

REGISTRY = ("[hub]\nmax_batch_lines = 300\nmax_batch_file_mb = 1\n"
            + text_model("echo", more="max_concurrency = 8") + image_model("pix")
            + text_model("slow", "--delay", "0.4", more="max_concurrency = 2"))
ENDED = ("completed", "failed", "expired", "cancelled")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = start_hub(tmp_path_factory.mktemp("batches"), REGISTRY)
    yield h
    h.stop_leaving_nothing()


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def chat_line(i: int, model: str = "echo", **extra) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"prompt {i}"}], **extra}}


def run_batch(c: openai.OpenAI, lines: list[dict], endpoint: str = "/v1/chat/completions",
              window: str = "24h") -> str:
    f = c.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return c.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window=window).id


def wait_ended(c: openai.OpenAI, batch_id: str, timeout: float = 120):
    wait_for(lambda: c.batches.retrieve(batch_id).status in ENDED, f"batch {batch_id} ended", timeout, every=0.2)
    return c.batches.retrieve(batch_id)


def read_lines(c: openai.OpenAI, file_id: str | None) -> dict[str, dict]:
    if file_id is None:
        return {}
    out = [json.loads(x) for x in c.files.content(file_id).text.splitlines() if x.strip()]
    by_id = {x["custom_id"]: x for x in out}
    assert len(by_id) == len(out), "each custom_id once"
    return by_id


def test_a_chat_batch_of_200_lines_completes_with_every_answer(hub) -> None:
    c = client(hub)
    t0 = time.monotonic()
    f = c.files.create(file=("chat.jsonl", jsonl([chat_line(i) for i in range(200)])), purpose="batch")
    assert (f.object, f.purpose, f.filename, f.status) == ("file", "batch", "chat.jsonl", "processed")
    assert c.files.retrieve(f.id).bytes == f.bytes > 0
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                         metadata={"job": "nightly"})
    assert (b.object, b.status, b.endpoint, b.metadata) == ("batch", "in_progress", "/v1/chat/completions",
                                                            {"job": "nightly"})
    assert b.request_counts.total == 200 and b.expires_at - b.created_at == 24 * 3600
    b = wait_ended(c, b.id)
    print(f"200 chat lines in {time.monotonic() - t0:.1f}s")
    assert b.status == "completed" and b.completed_at and b.finalizing_at and b.error_file_id is None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (200, 200, 0)
    out = read_lines(c, b.output_file_id)
    assert set(out) == {f"req-{i}" for i in range(200)}
    for i in (0, 57, 199):
        line = out[f"req-{i}"]
        assert line["error"] is None and line["response"]["status_code"] == 200 and line["response"]["request_id"]
        assert line["response"]["body"]["choices"][0]["message"]["content"] == f"echo: prompt {i}"
    assert c.files.retrieve(b.output_file_id).purpose == "batch_output"
    assert b.id in [x.id for x in c.batches.list(limit=100)]
    assert {f.id, b.output_file_id} <= {x.id for x in c.files.list()}
    metrics = httpx.get(hub.url + "/metrics", timeout=10).text
    assert 'hub_batch_lines_total{model="echo",status="completed"} 200.0' in metrics


def test_an_image_batch_of_20_lines_completes(hub) -> None:
    c = client(hub)
    lines = [{"custom_id": f"img-{i}", "method": "POST", "url": "/v1/images/generations",
              "body": {"model": "pix", "prompt": f"a cat {i}", "size": "32x32", "response_format": "b64_json"}}
             for i in range(20)]
    b = wait_ended(c, run_batch(c, lines, "/v1/images/generations"))
    assert b.status == "completed" and b.request_counts.completed == 20
    out = read_lines(c, b.output_file_id)
    assert set(out) == {f"img-{i}" for i in range(20)}
    assert all(x["response"]["body"]["data"][0]["b64_json"] for x in out.values())


def test_lines_that_fail_at_the_engine_go_to_the_error_file(hub) -> None:
    c = client(hub)
    b = wait_ended(c, run_batch(c, [chat_line(0), chat_line(1, max_tokens=-1)]))
    assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (1, 1)
    assert set(read_lines(c, b.output_file_id)) == {"req-0"}
    err = read_lines(c, b.error_file_id)["req-1"]
    assert err["response"]["status_code"] == 400 and "max_tokens" in err["response"]["body"]["error"]["message"]


def bad_request(c: openai.OpenAI, lines: list[dict] | bytes, endpoint: str = "/v1/chat/completions") -> dict:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    f = c.files.create(file=("bad.jsonl", data), purpose="batch")
    with pytest.raises(openai.BadRequestError) as err:
        c.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")
    return err.value.response.json()["error"]


def test_bad_lines_are_refused_naming_the_line_and_the_fix(hub) -> None:
    c = client(hub)
    cases = [
        (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}\n', "line 1: ",
         "JSON object"),
        ([chat_line(0), chat_line(0)], "line 2: custom_id 'req-0' is used on line 1 too", "unique"),
        ([chat_line(0), chat_line(1, model="nope")], "line 2: body.model 'nope' is not a registered model",
         "available: echo, pix, slow"),
        ([chat_line(0, model="pix")], "line 1: model 'pix' is an image model", "/v1/images/generations"),
        ([{**chat_line(0), "url": "/v1/completions"}], "line 1: url '/v1/completions' is not the batch's endpoint",
         "every line"),
        ([{**chat_line(0), "method": "GET"}], "line 1: method", "POST"),
        ([chat_line(0, stream=True)], "line 1: body.stream is true", "cannot stream"),
        ([{**chat_line(0), "body": {"model": "echo"}}], "line 1: body.messages must be a list of messages", ""),
        (b"\n\n", "no lines", "custom_id"),
    ]
    for lines, first, second in cases:
        err = bad_request(c, lines)
        assert first in err["message"] and second in err["message"], err
        assert err["param"] == "input_file_id" and err["type"] == "invalid_request_error"


def test_limits_and_bad_requests_get_their_own_errors(hub) -> None:
    c = client(hub)
    err = bad_request(c, [chat_line(i) for i in range(301)])
    assert "301 lines" in err["message"] and "max_batch_lines" in err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.files.create(file=("big.jsonl", b"x" * (1024 * 1024 + 10)), purpose="batch")
    assert "max_batch_file_mb" in e.value.response.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="purpose"):
        c.files.create(file=("a.jsonl", b"{}"), purpose="fine-tune")
    f = c.files.create(file=("a.jsonl", jsonl([chat_line(0)])), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="cannot be batched"):
        c.batches.create(input_file_id=f.id, endpoint="/v1/audio/speech", completion_window="24h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="soon")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError, match="upload the input"):
        c.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        c.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        c.files.content("file-nope")
    assert c.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)
    r = httpx.post(hub.v1 + "/batches", json={"input_file_id": "x"}, timeout=10)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_cancel_lets_running_lines_finish_and_sends_no_more(hub) -> None:
    c = client(hub)
    bid = run_batch(c, [chat_line(i, model="slow") for i in range(20)])
    wait_for(lambda: c.batches.retrieve(bid).request_counts.completed >= 1, "a first line done", 60)
    b = c.batches.cancel(bid)
    assert b.status == "cancelling" and b.cancelling_at
    b = wait_ended(c, bid)
    assert b.status == "cancelled" and b.cancelled_at
    done, errors = read_lines(c, b.output_file_id), read_lines(c, b.error_file_id)
    assert len(done) == b.request_counts.completed and 1 <= len(done) < 20
    assert set(done) | set(errors) == {f"req-{i}" for i in range(20)} and not set(done) & set(errors)
    assert all(e["error"]["code"] == "batch_cancelled" and e["response"] is None for e in errors.values())
    metrics = httpx.get(hub.url + "/metrics", timeout=10).text
    counted = re.search(r'^hub_batch_lines_total\{model="slow",status="cancelled"\} (\S+)$', metrics, re.M)
    assert counted and float(counted.group(1)) >= len(errors)
    with pytest.raises(openai.ConflictError):
        c.batches.cancel(run_batch_done(c))


def run_batch_done(c: openai.OpenAI) -> str:
    bid = run_batch(c, [chat_line(0)])
    assert wait_ended(c, bid).status == "completed"
    return bid


def test_a_batch_past_its_completion_window_expires(hub) -> None:
    c = client(hub)
    bid = run_batch(c, [chat_line(i, model="slow") for i in range(40)], window="2s")
    b = wait_ended(c, bid, timeout=60)
    assert b.status == "expired" and b.expired_at and b.expired_at - b.created_at >= 2
    done, errors = read_lines(c, b.output_file_id), read_lines(c, b.error_file_id)
    assert set(done) | set(errors) == {f"req-{i}" for i in range(40)} and len(done) < 40
    assert all(e["error"]["code"] == "batch_expired" for e in errors.values())


def test_a_batch_leaves_the_last_place_to_interactive_requests(hub) -> None:
    c = client(hub)
    bid = run_batch(c, [chat_line(i, model="slow") for i in range(12)])
    wait_for(lambda: c.batches.retrieve(bid).request_counts.completed >= 1, "a first line done", 60)
    seen = set()
    for _ in range(10):  # max_concurrency 2: the batch keeps one place free
        seen.add(hub.models()["slow"]["in_flight"])
        time.sleep(0.05)
    assert seen == {1}, seen
    answer = c.chat.completions.create(model="slow", messages=[{"role": "user", "content": "now"}])
    assert answer.choices[0].message.content == "echo: now"
    assert c.batches.retrieve(bid).status == "in_progress", "the request did not wait for the batch"
    assert wait_ended(c, bid).status == "completed"


def test_the_cli_lists_shows_and_cancels_batches(hub) -> None:
    c = client(hub)
    bid = run_batch_done(c)
    r = hub.cli("batch", "ls")
    assert r.returncode == 0 and any(bid in ln and "completed" in ln and "1+0/1" in ln for ln in r.stdout.splitlines())
    r = hub.cli("batch", "show", bid)
    assert r.returncode == 0 and f"output_file_id: {c.batches.retrieve(bid).output_file_id}" in r.stdout
    r = hub.cli("batch", "show", bid, "--json")
    assert json.loads(r.stdout)["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    r = hub.cli("batch", "cancel", bid)
    assert r.returncode == 1 and "only a batch in progress can be cancelled" in r.stderr
    slow = run_batch(c, [chat_line(i, model="slow") for i in range(10)])
    r = hub.cli("batch", "cancel", slow)
    assert r.returncode == 0 and "cancelling" in r.stdout
    assert wait_ended(c, slow).status == "cancelled"
