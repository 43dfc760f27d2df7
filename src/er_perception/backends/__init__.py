"""ER backends by name. Imported lazily, so that a backend's heavy dependencies (a model
framework) load only when that backend is chosen."""
from __future__ import annotations

from importlib import import_module

from er_perception.backends.base import ErBackend

BACKENDS = {"sim": "er_perception.backends.sim:SimBackend",
            "hf": "er_perception.backends.hf:HfBackend",
            "gemini": "er_perception.backends.gemini:GeminiBackend",
            "learned": "er_perception.backends.learned:LearnedBackend"}


def make_backend(name: str, **kwargs) -> ErBackend:
    """Instantiate the backend called `name` (see BACKENDS)."""
    try:
        module, cls = BACKENDS[name].split(":")
    except KeyError:
        raise ValueError(
            f"unknown ER backend {name!r}; known: {', '.join(sorted(BACKENDS))}") from None
    return getattr(import_module(module), cls)(**kwargs)
