"""`hub build`: build the Diffusers engine image (docker/diffusers/Dockerfile) on a Docker host of the registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from docker.errors import APIError

from hub.config import Registry
from hub.errors import RuntimeFailure
from hub.runtimes.docker import CONNECTION_ERRORS, DockerRuntime

REPO_ROOT = Path(__file__).resolve().parents[1]
DIFFUSERS_DOCKERFILE = "docker/diffusers/Dockerfile"


def build_image(registry: Registry, host: str, tag: str, base_image: str | None = None,
                wheels: list[Path] | None = None, network: str | None = None,
                out: Callable[[str], None] = print, device: str = "cuda") -> str:
    """Build docker/diffusers/Dockerfile on a host's daemon from locks/diffusers-<device>.txt (the context is this
    checkout, filtered by .dockerignore); `wheels` are copied into docker/diffusers/wheels/ first (the CPU build of
    torch for a CPU image). Returns the image id."""
    dockerfile = REPO_ROOT / DIFFUSERS_DOCKERFILE
    if not dockerfile.exists():
        raise RuntimeFailure(f"{DIFFUSERS_DOCKERFILE} is not in {REPO_ROOT}: run `hub build` from a checkout of hub")
    for whl in wheels or []:
        if not whl.is_file():
            raise RuntimeFailure(f"wheel {whl} does not exist")
        target = dockerfile.parent / "wheels" / whl.name
        if not target.exists() or target.stat().st_size != whl.stat().st_size:
            out(f"copying {whl.name} into the build context")
            target.write_bytes(whl.read_bytes())
    rt = DockerRuntime(registry, host)
    client = rt._connect()
    args = {"LOCK": f"diffusers-{device}", **({"BASE_IMAGE": base_image} if base_image else {})}
    out(f"building {tag} from {DIFFUSERS_DOCKERFILE} and locks/diffusers-{device}.txt on docker host {host!r} "
        f"({rt.where})"
        + (f" with BASE_IMAGE={base_image}" if base_image else ""))
    try:
        stream = client.api.build(path=str(REPO_ROOT), dockerfile=DIFFUSERS_DOCKERFILE, tag=tag, buildargs=args,
                                  network_mode=network, rm=True, decode=True)
        image_id = ""
        for chunk in stream:
            if "stream" in chunk and chunk["stream"].strip():
                out(chunk["stream"].rstrip())
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            if "error" in chunk:
                raise RuntimeFailure(f"building {tag} failed: {chunk['error'].strip()}")
    except APIError as err:
        raise RuntimeFailure(f"building {tag} failed: {err.explanation or err}") from None
    except CONNECTION_ERRORS as err:
        raise RuntimeFailure(rt._unreachable(err)) from None
    finally:
        client.close()
    out(f"built {tag} ({image_id[:19] or 'no id reported'})")
    return image_id
