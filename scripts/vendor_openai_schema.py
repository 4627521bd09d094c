"""Vendor the part of OpenAI's published OpenAPI document that the hub's answers must fit (tests/test_schema.py).

    python scripts/vendor_openai_schema.py OPENAPI_JSON COMMIT

OPENAPI_JSON is `openapi.json` of a checkout of github.com/openai/openai-openapi at COMMIT. The answer schemas
named in ROOTS, and every schema they reference, are written to tests/schemas/openai-openapi.json with the commit
named, so that the tests validate against a known version of the document and never fetch it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "schemas" / "openai-openapi.json"
ROOTS = (
    "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "CreateCompletionResponse",
    "CreateEmbeddingResponse", "ImagesResponse", "ImageGenStreamEvent", "ImageEditStreamEvent", "Response",
    "ResponseStreamEvent", "ErrorResponse", "ListModelsResponse", "Model",
)
PREFIX = "#/components/schemas/"


def refs(node: object) -> set[str]:
    """The schema names a node references."""
    if isinstance(node, dict):
        out = {node["$ref"][len(PREFIX):]} if isinstance(node.get("$ref"), str) else set()
        return out.union(*(refs(v) for k, v in node.items() if not k.startswith("x-")))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def strip(node: object) -> object:
    """A schema without the documentation-only `x-` extensions (examples, metadata)."""
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if not k.startswith("x-")}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(path: str, commit: str) -> None:
    doc = json.loads(Path(path).read_text())
    schemas = doc["components"]["schemas"]
    keep, todo = {}, list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = strip(schemas[name])
        todo += sorted(refs(keep[name]) - set(keep))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "source": "https://github.com/openai/openai-openapi (openapi.json)", "commit": commit,
        "openapi": doc["openapi"], "version": doc["info"]["version"], "roots": list(ROOTS),
        "components": {"schemas": dict(sorted(keep.items()))},
    }, indent=1, sort_keys=False) + "\n")
    print(f"{len(keep)} schemas from {commit[:12]} -> {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
