"""hub: text and image models behind one OpenAI-compatible endpoint, started on demand."""

__version__ = "0.1.0"
