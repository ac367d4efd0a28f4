"""docker: builds through the daemon (BuildKit), no isolation flag; OCI archives go through skopeo."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CommandError, UserError
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


class Docker(Engine):
    name = "docker"
    binary = "docker"
    package = "docker.io"

    def _build_argv(self, request: BuildRequest, iidfile: str) -> list[str]:
        argv = ["docker", "build", f"--iidfile={iidfile}", "-f", str(request.containerfile)]
        for tag in request.tags:
            argv += ["-t", tag]
        for key, value in sorted(request.build_args.items()):
            argv += ["--build-arg", f"{key}={value}"]
        if request.cache_to:
            raise UserError("docker's default builder cannot write a build cache to a registry (--cache-to needs "
                            "a buildx builder of the docker-container driver)",
                            hint="use --engine podman or buildah with --cache-registry, or build without it")
        if request.cache_from:   # an image to take cached layers from: the classic builder and BuildKit read it
            argv.append(f"--cache-from={check_ref(request.cache_from)}")
        if request.no_cache:
            argv.append("--no-cache")
        return [*argv, "--", str(request.context)]

    def build(self, request: BuildRequest, on_line: Callable[[str], None] | None = None) -> str:
        watch = BuildWatch(on_line)
        with tempfile.TemporaryDirectory(prefix="openos365-build-") as tmp:
            iidfile = os.path.join(tmp, "iid")
            try:
                run(self._build_argv(request, iidfile), on_line=watch)
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
                         layer_dirs=overlay_layer_dirs(data), parent=data.get("Parent") or None)

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
            run(["skopeo", "copy", "--", f"docker-daemon:{ref}", dest], capture=True, step="save oci-archive")

    def import_tarball(self, path: Path, ref: str, changes: list[str]) -> str:
        argv = ["docker", "import"]
        for change in changes:
            argv += ["--change", change]
        return run([*argv, "--", str(path), check_ref(ref)], capture=True).stdout.strip().removeprefix("sha256:")

    def pull(self, ref: str, tls_verify: bool = True, authfile: str | None = None) -> None:
        with _registry_env(ref, tls_verify, authfile) as env:
            try:
                run(["docker", "pull", "--", check_ref(ref)], step=f"pull {ref}", env=env)
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
