"""Experiments against a hub: grids of models, prompts and settings, kept as runs."""
