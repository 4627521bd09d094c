"""The web app (Gradio): Chat, Image and Models tabs, mounted at / by `hub serve`."""

from __future__ import annotations

from fastapi import FastAPI

from hub.config import Registry


def mount_ui(app: FastAPI, registry: Registry) -> None:
    """Mount the web app at / (built in hub/ui/app.py once the UI lands)."""
