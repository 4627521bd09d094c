"""What a model's pull fetches and where: its hub repo, revision and patterns (a `Target`), the cache its engine reads,
and whether that cache holds it complete already.

Rules that are not obvious:
- A source is a hub repo when it is not a local folder (LaunchContext.local_source). Engines that read a source
  (`needs_source`: vllm, diffusers) are pulled; other managed engines only where the registry names allow_patterns;
  an unmanaged one never.
- The cache is the one the engine reads: for the process runtime huggingface_hub's own (HF_HUB_CACHE, else
  HF_HOME/hub, from the model's env, else the hub's environment, which engines inherit); for Docker on the local
  host `<hf_cache>/hub`, which containers mount (hub/runtimes/container.py). A model only on remote Docker hosts is
  not pulled: its engine downloads it in its container, as before.
- Complete = the cached tree listing of the revision (written by an earlier pull) names every wanted file, and each
  is in the snapshot: `snapshot_download(local_files_only=True)` checks it, no network. A model fetched by other
  means (no tree listing) is pulled once: the dry run finds its files cached and downloads nothing.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from hub.config import ModelConfig, Registry
from hub.engines import get_engine
from hub.engines.base import LaunchContext, Patterns
from hub.errors import Conflict

log = logging.getLogger("hub.downloads")
DEFAULT_REVISION = "main"


@dataclass(frozen=True, eq=False)
class Target:
    """A repo at a revision, with the model whose engine picks its files, and the cache it goes to."""

    repo: str
    revision: str | None
    cache_dir: str
    model: ModelConfig
    in_container: bool = False  # the engine reads the cache inside a container, at the container's own path

    @property
    def key(self) -> tuple[str, ...]:
        """What one job downloads: every caller of the same key shares it. The files are part of it (the registry's
        patterns, else the engine's): a model of the same repo that picks other files must not join a job that
        leaves its files out. So is where from and as whom (the model's own HF_ENDPOINT and HF_TOKEN, a digest of
        the token): a model whose token may read a gated repo must not wait on a job that another's token fails."""
        m = self.model
        picks = repr((m.allow_patterns, m.ignore_patterns)) if m.allow_patterns is not None or \
            m.ignore_patterns is not None else f"engine:{m.engine}"
        token = m.env.get("HF_TOKEN")
        who = hashlib.sha256(token.encode()).hexdigest()[:16] if token else ""
        return self.cache_dir, self.repo, self.revision or DEFAULT_REVISION, picks, m.env.get("HF_ENDPOINT", ""), who

    def patterns(self, files: list[str]) -> Patterns:
        """(allow_patterns, ignore_patterns) for the repo's `files`: the registry's where it sets either (the pair
        replaces the engine's: allow_patterns = ["*.bin"] gets the .bin files the engine would skip), else the
        engine's."""
        m = self.model
        if m.allow_patterns is not None or m.ignore_patterns is not None:
            return m.allow_patterns, m.ignore_patterns
        return get_engine(m.engine).download_patterns(m, files) or (None, None)

    def engine_env(self) -> dict[str, str]:
        """What the engine of a model pulled complete runs with: offline (it never downloads nor blocks on the
        network in its start) unless it has adapters from hub repos, reading the cache it was pulled into."""
        # an adapter from a hub repo is fetched by the engine itself at its start: that engine stays online (the
        # base is in the cache already, so it downloads nothing else)
        env = {} if any(lora.is_repo for lora in self.model.loras.values()) else {"HF_HUB_OFFLINE": "1"}
        if not self.in_container:
            env["HF_HUB_CACHE"] = self.cache_dir
        return env


def hf_hub_cache(env: dict[str, str] | None = None) -> str:
    """huggingface_hub's cache of an engine process: its model's `env` (HF_HUB_CACHE, else HF_HOME/hub) over this
    process's environment (the same, else huggingface_hub's default), as the engine itself would read it."""
    from huggingface_hub import constants

    env = env or {}
    if env.get("HF_HUB_CACHE"):
        return str(Path(env["HF_HUB_CACHE"]).expanduser())
    if env.get("HF_HOME"):
        return str(Path(env["HF_HOME"]).expanduser() / "hub")
    return str(Path(constants.HF_HUB_CACHE).expanduser())


def target_of(registry: Registry, model_id: str, host: str | None = None, strict: bool = False) -> Target | None:
    """The pull of a model: None when there is nothing to pull (a local folder, an engine that reads no repo, a
    model placed on a remote Docker host). `host`: where it will run (None: anywhere it may). `strict`: raise
    Conflict saying why instead of None (a pull asked for by a person)."""
    m = registry.models[model_id]
    engine = get_engine(m.engine)

    def nothing(why: str) -> None:
        if strict:
            raise Conflict(f"model {model_id!r}: nothing to pull: {why}", param="model")
        return None

    if not engine.managed:
        return nothing(f"its engine {m.engine!r} is not managed by the hub (it runs elsewhere)")
    if not m.source:
        return nothing("it has no source")
    ctx = LaunchContext(model_id, m, registry, 0)
    if ctx.local_source():
        return nothing(f"its source is a local folder ({ctx.local_source()})")
    if not (engine.needs_source or m.allow_patterns is not None):
        return nothing(f"its engine {m.engine!r} reads no hub repo (set allow_patterns in models.toml to have the hub "
                       "pull its source)")
    if registry.runtime_of(model_id) == "process":
        return Target(ctx.source(), m.revision, hf_hub_cache(m.env), m)
    if registry.runtime_of(model_id) == "ray":
        return nothing(f"it runs on a Ray node, and the hub pulls into this machine's cache only: its engine "
                       f"downloads {ctx.source()} on its node on its first start")
    if "local" not in ([host] if host else m.hosts):
        where = ", ".join(m.hosts if host is None else [host])
        return nothing(f"it runs on Docker host {where}, and the hub pulls into the local cache only: its engine "
                       f"downloads {ctx.source()} in its container on its first start")
    cache = Path(registry.host_config("local").hf_cache).expanduser() / "hub"
    return Target(ctx.source(), m.revision, str(cache), m, in_container=True)


def models_sharing(registry: Registry, target: Target) -> list[str]:
    """The models whose pull is the same download as `target`'s."""
    out = []
    for mid in registry.models:
        try:
            t = target_of(registry, mid)
        except Exception:  # a model whose engine is not installed: it shares nothing
            continue
        if t is not None and t.key == target.key:
            out.append(mid)
    return out


def complete_path(target: Target) -> str | None:
    """The snapshot folder when the cache holds every wanted file of the target's revision (no network), else
    None. Blocking (file reads): run it in a thread."""
    from huggingface_hub import get_cached_repo_tree, snapshot_download

    try:
        files = [f.path for f in get_cached_repo_tree(target.repo, revision=target.revision,
                                                       cache_dir=target.cache_dir)]
        allow, ignore = target.patterns(files)
        return snapshot_download(target.repo, revision=target.revision, cache_dir=target.cache_dir,
                                 allow_patterns=allow, ignore_patterns=ignore, local_files_only=True)
    except Exception as err:  # not cached, partial, unreadable: a pull finds out what is missing
        log.debug("%s@%s is not complete in %s: %r", target.repo, target.revision, target.cache_dir, err)
        return None
