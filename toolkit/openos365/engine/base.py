"""The engine interface and the data it returns."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import CommandError, OpenOSError, UserError
from ..runner import run


@dataclass(frozen=True)
class ImageInfo:
    id: str                      # config digest without "sha256:", the cache key of everything downstream
    names: tuple[str, ...]
    created: int                 # epoch seconds; the default SOURCE_DATE_EPOCH of exports
    config: dict[str, Any]       # Env, Entrypoint, Cmd, Labels, ...
    digest: str | None = None    # manifest digest, when the engine knows it


@dataclass(frozen=True)
class BuildRequest:
    containerfile: Path
    context: Path
    tags: list[str]
    build_args: dict[str, str] = field(default_factory=dict)
    cache_from: str | None = None     # a registry repository used as a shared layer cache
    cache_to: str | None = None
    no_cache: bool = False


def parse_created(text: str) -> int:
    """RFC 3339 as engines write it (nanoseconds, Z or an offset, sometimes ' +0000 UTC') -> epoch seconds."""
    clean = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    clean = re.sub(r" ([+-]\d{2})(\d{2})( \w+)?$", r"\1:\2", clean)
    try:
        return int(datetime.fromisoformat(clean).timestamp())
    except ValueError as exc:
        raise UserError(f"cannot read the image's creation time '{text}'",
                        hint="set SOURCE_DATE_EPOCH to choose the time of the export") from exc


# What podman and docker print when a registry operation fails -> what it means and what to do.
_REGISTRY_FAILURES = (
    (("connection refused", "no such host", "i/o timeout", "network is unreachable", "no route to host"),
     "cannot reach the registry", "check the host name and port, that the registry is running, and any proxy "
     "or firewall in between"),
    (("manifest unknown", "name unknown"), "the registry has no such image (unknown repository or tag)",
     "check the repository and the tag (`skopeo list-tags docker://HOST/REPO` lists the tags)"),
    (("unauthorized", "authentication required", "denied"), "the registry refused the credentials",
     "log in with `podman login HOST` (the secret stays in the engine's auth file) or pass --authfile FILE"),
    (("server gave http response to https client", "x509:", "tls:"), "TLS with the registry failed",
     "for a registry without TLS pass --no-tls-verify, or mark it `insecure = true` in registries.conf"),
)


def registry_error(exc: CommandError, action: str, ref: str) -> OpenOSError:
    """A failed pull/push -> an error saying which of the usual causes it is, or exc itself."""
    text = "\n".join(exc.tail).lower()
    for needles, what, hint in _REGISTRY_FAILURES:
        if any(needle in text for needle in needles):
            detail = next((line.split("Error: ", 1)[1] for line in reversed(exc.tail) if "Error: " in line), "")
            return UserError(f"{action} {ref}: {what}" + (f" ({detail})" if detail else ""), hint=hint)
    return exc


class Engine(ABC):
    name: str = ""
    binary: str = ""
    package: str = ""

    def _json(self, argv: list[str], **kwargs: Any) -> Any:
        return json.loads(run(argv, capture=True, **kwargs).stdout or "null")

    @abstractmethod
    def build(self, request: BuildRequest, on_line: Any = None) -> str:
        """Build; returns the image id."""

    @abstractmethod
    def exists(self, ref: str) -> bool: ...

    @abstractmethod
    def inspect(self, ref: str) -> ImageInfo: ...

    @abstractmethod
    def tag(self, ref: str, target: str) -> None: ...

    @contextmanager
    def mounted(self, ref: str) -> Iterator[Path | None]:
        """The image's root tree as the engine sees it, read-only, or None where this engine or user
        cannot mount images (then the tree comes from a saved archive instead)."""
        yield None

    @abstractmethod
    def save(self, ref: str, path: Path, fmt: str, name: str | None = None) -> None:
        """Write a docker-archive or oci-archive of ref to path (tagged `name`, when given)."""

    @abstractmethod
    def import_tarball(self, path: Path, ref: str, changes: list[str]) -> str: ...

    @abstractmethod
    def pull(self, ref: str, tls_verify: bool = True, authfile: str | None = None) -> None: ...

    @abstractmethod
    def push(self, ref: str, dest: str, tls_verify: bool = True, authfile: str | None = None) -> None: ...

    def require(self, ref: str) -> ImageInfo:
        if not self.exists(ref):
            raise UserError(f"image '{ref}' does not exist in {self.name}'s local store",
                            hint=f"build it (openos365 build layers/NAME) or pull it (openos365 pull {ref})")
        return self.inspect(ref)

    def versions(self) -> str:
        return run([self.binary, "--version"], capture=True, check=False).stdout.strip()
