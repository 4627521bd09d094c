"""The image server: one Diffusers pipeline behind the OpenAI Images API. Runs inside the diffusers environment.

    python -m imageserver --model SRC --served-model-name ID --port P [--host H] [--options JSON] [--revision REV]
        [--loras JSON]
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError

from imageserver.api import Loras, ServerOptions
from imageserver.app import create_app


def _lines(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, start loading the pipeline and serve until SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m imageserver", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a local pipeline folder or a Hugging Face repo id")
    p.add_argument("--served-model-name", required=True, help="the model id the hub routes by")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--options", default="{}", help="the registry's args table as JSON")
    p.add_argument("--revision", help="the branch, tag or commit of a hub repo --model (default: its main branch)")
    p.add_argument("--loras", default="{}", help='LoRA adapters to load, as JSON: {"name": {"source": "folder, file '
                   'or hub repo", "weight_name": null, "scale": 1.0}}')
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        opts = ServerOptions.model_validate_json(a.options)
    except ValidationError as err:
        print(f"imageserver: invalid --options: {_lines(err)}", file=sys.stderr)
        return 2
    try:
        loras = Loras.validate_json(a.loras)
    except ValidationError as err:
        print(f"imageserver: invalid --loras: {_lines(err)}", file=sys.stderr)
        return 2
    failure: list[str] = []
    server: uvicorn.Server | None = None

    def fail(reason: str) -> None:
        failure.append(reason)
        if server is not None:
            server.should_exit = True

    app = create_app(a.model, a.served_model_name, opts, on_load_failure=fail, revision=a.revision,
                     loras=loras)
    server = uvicorn.Server(uvicorn.Config(app, host=a.host, port=a.port, log_level="info",
                                           timeout_graceful_shutdown=5))
    server.run()
    if failure:
        print(f"imageserver: could not load {a.model!r}: {failure[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
