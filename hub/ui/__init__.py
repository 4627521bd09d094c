"""The web app (Gradio): Chat, Image, Compare, Runs, Batches and Models tabs, mounted at / by `hub serve`.

The app is a client of the hub like any other: the official openai client on the hub's own /v1 and a small client
for /hub, both at the address the hub serves on and both sending the hub's API key when one is set. With a key set,
the web app asks for it too (any user name, the key as password), so the key protects the UI as it does the API.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Callable

from fastapi import FastAPI

from hub.config import Registry
from hub.errors import AuthError


def model_notes(registry: Registry) -> dict[str, str]:
    """The note shown when a model is picked: each model's `description` from the registry (none without one)."""
    return {mid: m.description for mid, m in registry.models.items() if m.description}


def key_auth(key: str) -> Callable[[str, str], bool]:
    """Gradio auth: any user name, the hub's API key as password."""
    return lambda username, password: secrets.compare_digest(password.encode(), key.encode())


AUTH_MESSAGE = "password: the hub's API key (any user name)"


def _blocks(registry: Registry, notes: dict[str, str] | None = None):
    from hub.ui.app import build_ui
    from hub.ui.clients import make_clients

    client, admin = make_clients(registry.url, registry.api_key())
    return build_ui(client, admin, model_notes(registry) if notes is None else notes, registry.state_dir / "runs")


def mount_ui(app: FastAPI, registry: Registry) -> None:
    """Mount the web app at / of the hub's FastAPI app (after the /v1 and /hub routes, which keep precedence)."""
    import gradio as gr

    from hub.ui.theme import CSS, Terminal

    key = registry.api_key()
    notes = model_notes(registry)

    def took(new: Registry) -> None:  # a registry reload: the notes the tabs read change in place
        notes.clear()
        notes.update(model_notes(new))

    app.state.manager.reloads.listen(took)
    app.state.notes = notes
    gr.mount_gradio_app(app, _blocks(registry, notes), path="/", theme=Terminal(), css=CSS, footer_links=[],
                        auth=key_auth(key) if key else None, auth_message=AUTH_MESSAGE if key else None,
                        server_name=registry.hub.host, server_port=registry.hub.port, ssr_mode=False)


def share_ui(registry: Registry, report: Callable[[str | None, str | None], None]) -> Callable[[], None]:
    """Launch a second copy of the web app with a Gradio share link, in the background.

    Sharing puts the app on a public URL, so it requires the hub's API key (used as the password): without one this
    raises AuthError at once. Gradio's attempt can take tens of seconds (without internet it gives up and leaves no
    link), so the hub keeps serving meanwhile; `report(url, error)` is called when it is known (url None: no link).
    Returns a function that closes the shared copy (its server thread would otherwise keep the process alive).
    """
    key = registry.api_key()
    if not key:
        env = registry.hub.api_key_env
        how = f"set ${env}" if env else "set [hub] api_key_env = \"HUB_API_KEY\" in the registry and export it"
        raise AuthError(f"--share puts the web app on a public URL and needs an API key as its password: {how}")

    from hub.ui.theme import CSS, Terminal

    # Built here, in the caller's thread: gradio's block context is global, so two apps must not be built at once.
    demo = _blocks(registry)

    def launch() -> None:
        try:
            demo.launch(share=True, prevent_thread_lock=True, server_name="127.0.0.1", auth=key_auth(key),
                        auth_message=AUTH_MESSAGE, theme=Terminal(), css=CSS, footer_links=[], quiet=True,
                        ssr_mode=False)
        except Exception as err:
            report(None, f"{type(err).__name__}: {err}")
            return
        report(demo.share_url, None)

    def close() -> None:
        with contextlib.suppress(Exception):
            demo.close()

    threading.Thread(target=launch, name="hub-share", daemon=True).start()
    return close
