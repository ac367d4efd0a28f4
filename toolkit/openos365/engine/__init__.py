"""Container engines behind one small interface; detect() picks what is installed (podman first)."""

from __future__ import annotations

import os

from ..errors import MissingToolError, UserError
from ..runner import which
from .base import BuildRequest, Engine, ImageInfo, check_ref
from .docker import Docker
from .podman import Buildah, Podman

ENGINES: dict[str, type[Engine]] = {"podman": Podman, "buildah": Buildah, "docker": Docker}

__all__ = ["ENGINES", "BuildRequest", "Engine", "ImageInfo", "check_ref", "detect"]


def detect(name: str | None = None) -> Engine:
    """The engine named (or $OPENOS365_ENGINE), else the first installed of podman, buildah, docker."""
    name = name or os.environ.get("OPENOS365_ENGINE") or None
    if name is not None:
        if name not in ENGINES:
            raise UserError(f"unknown engine '{name}'", hint=f"use one of: {', '.join(ENGINES)}")
        engine_cls = ENGINES[name]
        if which(engine_cls.binary) is None:
            raise MissingToolError(f"engine '{name}' is not installed",
                                   hint=f"install it (Debian: apt-get install {engine_cls.package})")
        return _ready(engine_cls())
    for engine_cls in ENGINES.values():
        if which(engine_cls.binary) is not None:
            return _ready(engine_cls())
    raise MissingToolError("no container engine found (podman, buildah or docker)",
                           hint="install podman: apt-get install podman (Fedora: dnf install podman)")


def _ready(engine: Engine) -> Engine:
    engine.check_ready()
    return engine
