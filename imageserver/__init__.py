"""The Diffusers image server: runs in the Diffusers environment and never imports the hub."""
