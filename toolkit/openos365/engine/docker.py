"""docker: builds through the daemon (the classic builder or BuildKit, as docker would choose), no isolation
flag; OCI archives go through skopeo."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import log
from ..errors import CommandError, MissingToolError, UserError
from ..runner import run, succeeds
from .base import (
    BuildRequest,
    BuildWatch,
    Engine,
    ImageInfo,
    check_ref,
    overlay_layer_dirs,
    parse_created,
    registry_error,
)

# From this release of the docker CLI on, BuildKit is the buildx plugin; before it, BuildKit was built in.
BUILDX_CLI = 23
_TRUE, _FALSE = ("1", "t", "true"), ("0", "f", "false")   # how docker reads DOCKER_BUILDKIT (Go's ParseBool)
_DAEMON_HINT = ("start the daemon (`systemctl start docker`, or `dockerd &` as root), or point DOCKER_HOST at a "
                "running one (e.g. unix:///run/user/$UID/docker.sock for rootless docker); --engine podman needs "
                "no daemon")


@dataclass(frozen=True)
class DockerSetup:
    """The docker CLI, the daemon it reaches, and the builder `docker build` runs with."""

    client: str
    server: str
    buildkit: bool

    @property
    def builder(self) -> str:
        return "BuildKit" if self.buildkit else "the classic builder"


def cli_major(version: str) -> int:
    """The docker CLI's major release, e.g. 28 of '28.2.2' and 20 of '20.10.24+dfsg1' (0 when unreadable)."""
    match = re.match(r"(\d+)\.", version)
    return int(match.group(1)) if match else 0


def choose_builder(client: str, has_buildx: bool, env_value: str | None) -> bool:
    """Whether `docker build` runs BuildKit, the way docker itself decides: DOCKER_BUILDKIT when set, else
    BuildKit where the CLI has it by default (buildx, from CLI 23 on). A BuildKit asked for but missing is an
    error here rather than docker's, so that the fix can be named."""
    available = has_buildx if cli_major(client) >= BUILDX_CLI else True
    if env_value is None or env_value == "":
        return cli_major(client) >= BUILDX_CLI and has_buildx
    value = env_value.strip().lower()
    if value in _FALSE:
        return False
    if value not in _TRUE:
        raise UserError(f"DOCKER_BUILDKIT={env_value!r} is neither 1 nor 0",
                        hint="set DOCKER_BUILDKIT=1 (BuildKit) or 0 (the classic builder), or unset it")
    if not available:
        raise MissingToolError(f"DOCKER_BUILDKIT=1, but docker CLI {client} has BuildKit only through the buildx "
                               "plugin, which is not installed",
                               hint="install docker-buildx (Debian 13: apt-get install docker-buildx), or use "
                               "Debian 12's docker.io CLI (/usr/bin/docker 20.10 has BuildKit built in), or set "
                               "DOCKER_BUILDKIT=0 for the classic builder")
    return True


class Docker(Engine):
    name = "docker"
    binary = "docker"
    package = "docker.io"

    def __init__(self) -> None:
        self._setup: DockerSetup | None = None

    def setup(self) -> DockerSetup:
        """The CLI and daemon versions (one `docker version`), and the builder; a clear error when the daemon
        cannot be reached."""
        if self._setup is not None:
            return self._setup
        result = run(["docker", "version", "--format", "{{json .}}"], capture=True, check=False)
        try:
            versions = json.loads(result.stdout or "null") or {}
        except json.JSONDecodeError:
            versions = {}
        client = (versions.get("Client") or {}).get("Version", "")
        server = (versions.get("Server") or {}).get("Version", "")
        if result.returncode != 0 or not server:
            where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
            reason = " ".join(result.tail[-1:]) or f"exit status {result.returncode}"
            raise MissingToolError(f"docker cannot reach its daemon at {where} ({reason})", hint=_DAEMON_HINT)
        has_buildx = cli_major(client) >= BUILDX_CLI and succeeds(["docker", "buildx", "version"])
        self._setup = DockerSetup(client, server, choose_builder(client, has_buildx, os.environ.get("DOCKER_BUILDKIT")))
        return self._setup

    def check_ready(self) -> None:
        self.setup()

    def describe(self) -> str:
        setup = self.setup()
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return f"CLI {setup.client}, daemon {setup.server} at {where}, builds with {setup.builder}"

    def _build_argv(self, request: BuildRequest, iidfile: str, buildkit: bool = False) -> list[str]:
        # RUN steps use the host's network, as podman's chroot builds do: it works with any daemon, also one
        # without a bridge (dockerd --bridge=none, as the tests start it) or without iptables.
        argv = ["docker", "build", f"--iidfile={iidfile}", "--network=host", "-f", str(request.containerfile)]
        if buildkit:
            argv.append("--progress=plain")   # one line per event, which BuildWatch follows
        for tag in request.tags:
            argv += ["-t", tag]
        for key, value in sorted(request.build_args.items()):
            argv += ["--build-arg", f"{key}={value}"]
        if request.cache_to:
            raise UserError(f"docker's {'BuildKit (docker driver)' if buildkit else 'classic builder'} cannot write "
                            "a build cache to a registry (--cache-registry needs --cache-to type=registry, which "
                            "only a buildx builder of the docker-container driver has)",
                            hint="use --engine podman or buildah with --cache-registry, or build without it")
        if request.cache_from:   # the classic builder takes cached layers from this local image, BuildKit from
            argv.append(f"--cache-from={check_ref(request.cache_from)}")   # the registry image's inline cache
        if request.no_cache:
            argv.append("--no-cache")
        if request.platform:
            argv.append(f"--platform={request.platform}")
        return [*argv, "--", str(request.context)]

    def build(self, request: BuildRequest, on_line: Callable[[str], None] | None = None) -> str:
        setup = self.setup()
        watch = BuildWatch(on_line)
        with tempfile.TemporaryDirectory(prefix="openos365-build-") as tmp:
            iidfile = os.path.join(tmp, "iid")
            argv = self._build_argv(request, iidfile, setup.buildkit)
            log.note(f"docker {setup.client} (daemon {setup.server}) builds with {setup.builder}")
            try:
                # DOCKER_BUILDKIT says it to docker too, so the builder that runs is the one chosen above.
                run(argv, on_line=watch, env={"DOCKER_BUILDKIT": "1" if setup.buildkit else "0"})
            except CommandError as exc:
                raise watch.error(exc, request.containerfile) from exc
            return Path(iidfile).read_text().strip().removeprefix("sha256:")

    def exists(self, ref: str) -> bool:
        return succeeds(["docker", "image", "inspect", "--", check_ref(ref)])

    def inspect(self, ref: str) -> ImageInfo:
        data = self._json(["docker", "image", "inspect", "--", check_ref(ref)])[0]
        digests = data.get("RepoDigests") or []
        return ImageInfo(id=data["Id"].removeprefix("sha256:"), names=tuple(data.get("RepoTags") or ()),
                         created=parse_created(data["Created"]), config=data.get("Config") or {},
                         digest=digests[0].split("@")[-1] if digests else None,
                         layer_dirs=overlay_layer_dirs(data), parent=data.get("Parent") or None,
                         architecture=data.get("Architecture") or None)

    def tag(self, ref: str, target: str) -> None:
        run(["docker", "tag", "--", check_ref(ref), check_ref(target)], capture=True)

    def parent_arg(self, image_id: str, image: str) -> str:
        """A tag made from the id (still one image): BuildKit reads a bare id in FROM as a registry name."""
        content_tag = f"{image}:{image_id[:12]}"
        self.tag(image_id, content_tag)
        return content_tag

    def save(self, ref: str, path: Path, fmt: str, name: str | None = None) -> None:
        check_ref(ref)
        if fmt == "docker-archive":
            if name and name != ref:
                self.tag(ref, name)
            run(["docker", "save", "-o", str(path), "--", name or ref], capture=True, step="docker save")
        else:
            dest = f"oci-archive:{path}" + (f":{check_ref(name)}" if name else "")
            host = os.environ.get("DOCKER_HOST")   # skopeo does not read it itself
            daemon = [f"--src-daemon-host={host}"] if host else []
            run(["skopeo", "copy", *daemon, "--", f"docker-daemon:{ref}", dest], capture=True,
                step="save oci-archive")

    def import_tarball(self, path: Path, ref: str, changes: list[str], arch: str | None = None) -> str:
        argv = ["docker", "import"] + ([f"--platform=linux/{arch}"] if arch else [])
        for change in changes:
            argv += ["--change", change]
        return run([*argv, "--", str(path), check_ref(ref)], capture=True).stdout.strip().removeprefix("sha256:")

    def pull(self, ref: str, tls_verify: bool = True, authfile: str | None = None, arch: str | None = None) -> None:
        platform = [f"--platform=linux/{arch}"] if arch else []
        with _registry_env(ref, tls_verify, authfile) as env:
            try:
                run(["docker", "pull", *platform, "--", check_ref(ref)], step=f"pull {ref}", env=env)
            except CommandError as exc:
                raise registry_error(exc, "pull", ref) from exc

    def push(self, ref: str, dest: str, tls_verify: bool = True, authfile: str | None = None) -> None:
        check_ref(ref)
        with _registry_env(dest, tls_verify, authfile) as env:
            if dest != ref:
                self.tag(ref, dest)
            try:
                run(["docker", "push", "--", check_ref(dest)], step=f"push {dest}", env=env)
            except CommandError as exc:
                raise registry_error(exc, "push to", dest) from exc


@contextmanager
def _registry_env(ref: str, tls_verify: bool, authfile: str | None) -> Iterator[dict[str, str] | None]:
    """What docker can honour of the registry options, or a refusal: never a silent drop. TLS is the
    daemon's choice (its insecure-registries); credentials come from a client config directory, which an
    auth file (podman's auth.json has docker's config.json form) can stand in for."""
    if not tls_verify:
        host = ref.split("/")[0] if "/" in ref else "the registry"
        raise UserError(f"--tls-verify=false: docker has no per-command TLS switch ({ref})",
                        hint=f'add "{host}" to "insecure-registries" in /etc/docker/daemon.json and restart '
                        "dockerd, or use --engine podman")
    if not authfile:
        yield None
        return
    if not Path(authfile).is_file():
        raise UserError(f"--authfile {authfile}: no such file",
                        hint="give the auth file `podman login --authfile FILE HOST` or `docker login` wrote")
    with tempfile.TemporaryDirectory(prefix="openos365-docker-config-") as config:
        shutil.copyfile(authfile, Path(config) / "config.json")
        yield {"DOCKER_CONFIG": config}
