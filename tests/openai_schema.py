"""Validation of answers against OpenAI's published OpenAPI document, vendored in tests/schemas/openai-openapi.json
(its commit named there; scripts/vendor_openai_schema.py makes it). Strictly typed clients decode exactly these
shapes: a value outside an enum fails the whole answer for them.

One reading is lenient, as every generated client is: an optional field sent as null counts as absent (vLLM sends
`"function_call": null`, `"annotations": null` where the schema only omits them; serde's Option, pydantic's
Optional and the official SDKs all read null so). A required field that is null where the schema does not allow it
still fails."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, validators
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC_PATH = Path(__file__).parent / "schemas" / "openai-openapi.json"
URI = "urn:openai-openapi"


@cache
def _doc() -> dict[str, Any]:
    return _nullable(json.loads(DOC_PATH.read_text()))


def _nullable(node: Any) -> Any:
    """The document declares OpenAPI 3.1 but keeps 3.0's `nullable: true` in a few places (the finish_reason of a
    stream chunk, which is null until the last one): read it as 3.0 means it, null allowed."""
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False) is True:
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@cache
def validator(name: str) -> Any:
    """A validator of component schema `name`, its references resolved within the vendored document."""
    registry = Registry().with_resource(URI, Resource(_doc(), DRAFT202012))
    return Lenient({"$ref": f"{URI}#/components/schemas/{name}"}, registry=registry)


def problems(name: str, obj: Any) -> list[str]:
    """Where `obj` departs from schema `name`: one line per error, empty when it fits (an optional field sent as
    null counts as absent; see the module docstring)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}"
            for e in validator(name).iter_errors(obj)]


def _properties(v: Any, properties: dict[str, Any], instance: Any, schema: dict[str, Any]) -> Any:
    """JSON Schema's `properties`, except that an optional property whose value is null is taken as absent."""
    if not v.is_type(instance, "object"):
        return
    required = set(schema.get("required", ()))
    for prop, sub in properties.items():
        if prop in instance and (instance[prop] is not None or prop in required):
            yield from v.descend(instance[prop], sub, path=prop, schema_path=prop)


Lenient = validators.extend(Draft202012Validator, {"properties": _properties})


def check(name: str, obj: Any) -> None:
    """Assert that `obj` fits schema `name` of OpenAI's document."""
    found = problems(name, obj)
    assert not found, f"not a valid {name} (openai-openapi {_doc()['commit'][:12]}):\n" + "\n".join(found)


def sse_events(text: str) -> list[tuple[str | None, Any]]:
    """The (event name, parsed data) pairs of a server-sent event stream; `[DONE]` and comments are skipped."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data and data != ["[DONE]"]:
            out.append((event, json.loads("\n".join(data))))
    return out
