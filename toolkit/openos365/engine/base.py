"""The engine interface and the data it returns."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import log
from ..errors import CommandError, OpenOSError, UserError, shown
from ..runner import run


@dataclass(frozen=True)
class ImageInfo:
    id: str                      # config digest without "sha256:", the cache key of everything downstream
    names: tuple[str, ...]
    created: int                 # epoch seconds; the default SOURCE_DATE_EPOCH of exports
    config: dict[str, Any]       # Env, Entrypoint, Cmd, Labels, ...
    digest: str | None = None    # manifest digest, when the engine knows it
    layer_dirs: tuple[str, ...] = ()   # overlay storage: each layer unpacked, bottom first (else empty)
    parent: str | None = None    # the image of the build step before (podman --layers, docker's builder)
    architecture: str | None = None   # OCI name (amd64, arm64), as the image's config says


def overlay_layer_dirs(inspected: dict[str, Any]) -> tuple[str, ...]:
    """The layer directories of an image as the overlay storage driver keeps them (`GraphDriver`: LowerDir
    is top first, UpperDir the top layer), bottom first; () for any other driver. A directory stands for
    one stored layer: its path never names other content while the layer exists."""
    driver = inspected.get("GraphDriver") or {}
    data = driver.get("Data") or {}
    if driver.get("Name") not in ("overlay", "overlay2") or not data.get("UpperDir"):
        return ()
    lower = [d for d in (data.get("LowerDir") or "").split(":") if d]
    return (*reversed(lower), data["UpperDir"])


@dataclass(frozen=True)
class BuildRequest:
    containerfile: Path
    context: Path
    tags: list[str]
    build_args: dict[str, str] = field(default_factory=dict)
    cache_from: str | None = None     # a registry repository used as a shared layer cache
    cache_to: str | None = None
    no_cache: bool = False
    platform: str | None = None       # linux/arm64: build for another architecture (RUN through qemu-user)


def check_ref(ref: str, *, where: str = "image reference") -> str:
    """ref, when it cannot be read as an option of the engine's command line (or as nothing at all).

    Engines get `--` before their positional arguments as well; this says what is wrong in the user's terms.
    """
    if not ref or ref.startswith("-") or any(c.isspace() or not c.isprintable() for c in ref):
        problem = "is empty" if not ref else "starts with '-'" if ref.startswith("-") else "contains white space"
        raise UserError(f"{where} {ref!r} {problem}",
                        hint="an image reference is [HOST[:PORT]/]NAME[:TAG] or NAME@DIGEST, "
                        "e.g. docker.io/library/debian:bookworm")
    return ref


def repository(ref: str) -> str:
    """ref without its tag or digest: registry.example.com:5000/os/base:1 -> registry.example.com:5000/os/base."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


# How a build names the step it runs: podman/buildah, docker's legacy builder, BuildKit (progress and
# its error summary " > [2/3] RUN ...:"), each as "STEP n/m: INSTRUCTION".
_STEP_PATTERNS = (
    re.compile(r"^STEP (\d+)/(\d+): (.+)$"),
    re.compile(r"^Step (\d+)/(\d+) : (.+)$"),
    re.compile(r"^#\d+ \[(?:\S+ )?(\d+)/(\d+)\] (.+)$"),
    re.compile(r"^ > \[(?:\S+ )?(\d+)/(\d+)\] (.+):$"),
)
# The failing instruction's own exit status, where the engine exits with another (docker: 1).
_STATUS_RE = re.compile(r"(?:exit status|exit code:|returned a non-zero code:) (\d+)")
BUILD_HINT = "fix the failing step in the Containerfile; the lines above are its last output (--verbose shows all)"


class BuildWatch:
    """Follows a build's output lines to say, when it fails, which Containerfile step failed and how."""

    def __init__(self, on_line: Callable[[str], None] | None = None):
        self.step: str | None = None
        self.on_line = on_line

    def __call__(self, line: str) -> None:
        for pattern in _STEP_PATTERNS:
            match = pattern.match(line)
            if match:
                step = f"STEP {match.group(1)}/{match.group(2)}: {match.group(3)}"
                if step != self.step:
                    self.step = step
                    log.info(step[:120])
                break
        if self.on_line is not None:
            self.on_line(line)

    def error(self, exc: CommandError, containerfile: Path) -> CommandError:
        """exc as a one-line error: the Containerfile, the step and the exit status, keeping its output."""
        status = next((m.group(1) for m in map(_STATUS_RE.search, reversed(exc.tail)) if m), exc.returncode)
        step = self.step or "the build"
        step = step if len(step) <= 160 else step[:157] + "..."
        return CommandError(exc.argv, exc.returncode, exc.tail, step=self.step, hint=BUILD_HINT,
                            message=f"{shown(containerfile)}: {step} failed with exit status {status}")


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

    def check_ready(self) -> None:
        """Raise, saying how to fix it, when the engine is installed but cannot work here (docker without a
        reachable daemon); engines that need nothing running have nothing to check."""
        return None

    def describe(self) -> str:
        """What `doctor` says of the engine beyond its name (docker: CLI, daemon and builder)."""
        return ""

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
        check_ref(ref)
        yield None

    @abstractmethod
    def save(self, ref: str, path: Path, fmt: str, name: str | None = None) -> None:
        """Write a docker-archive or oci-archive of ref to path (tagged `name`, when given)."""

    @abstractmethod
    def import_tarball(self, path: Path, ref: str, changes: list[str], arch: str | None = None) -> str: ...

    @abstractmethod
    def pull(self, ref: str, tls_verify: bool = True, authfile: str | None = None, arch: str | None = None) -> None:
        """Pull ref; from a multi-architecture index, the image of `arch` (default: the host's)."""

    @abstractmethod
    def push(self, ref: str, dest: str, tls_verify: bool = True, authfile: str | None = None) -> None: ...

    @property
    def mounts_images(self) -> bool:
        """Whether mounted() gives the engine's own view of an image (else trees come from saved archives,
        and are not used as bases for their children's trees)."""
        return False

    def parent_arg(self, image_id: str, image: str) -> str:
        """How a child layer's build names its parent (the PARENT build argument): the image id, which
        names exactly one image."""
        return image_id

    def find(self, ref: str) -> ImageInfo | None:
        """The image, or None when the store has no such image (one engine call either way)."""
        try:
            return self.inspect(ref)
        except CommandError:
            return None

    def require(self, ref: str) -> ImageInfo:
        found = self.find(check_ref(ref))
        if found is None:
            raise UserError(f"image '{ref}' does not exist in {self.name}'s local store",
                            hint=f"build it (openos365 build layers/NAME) or pull it (openos365 pull {ref})")
        return found
