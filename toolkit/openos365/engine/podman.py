"""podman (and buildah, which shares its image store and most of its flags)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import log, userns
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

_REGISTRY_HINT = ("check that the registry is reachable and the name is right; for a registry without TLS "
                  "pass --no-tls-verify; log in with `podman login` (credentials stay in its auth file)")


def _tls_flags(tls_verify: bool, authfile: str | None) -> list[str]:
    # No flag unless TLS is turned off: an explicit --tls-verify=true would override the engine's own
    # registries.conf (`insecure = true`), which is where a fleet configures its registries.
    flags = [] if tls_verify else ["--tls-verify=false"]
    if authfile:
        if not Path(authfile).is_file():
            raise UserError(f"--authfile {authfile}: no such file",
                            hint="give the auth file `podman login --authfile FILE HOST` wrote")
        flags.append(f"--authfile={authfile}")
    return flags


# containers/storage re-executes the engine from a sealed memfd copy for each chroot RUN step; sealing fails
# with EBUSY while another mapping of that copy is still writable (seen once in dozens of builds here).
_MEMFD_RACE = "sealing memfd copy: Device or resource busy"


class Podman(Engine):
    name = "podman"
    binary = "podman"
    package = "podman"
    _isolation_cache: dict[str, str] = {}

    def isolation(self, probe_image: str | None) -> str:
        """'oci' where the engine can start containers, else 'chroot'.

        Hosts with cgroups v1 in hybrid mode and many CI containers cannot create OCI containers
        (crun: 'setrlimit RLIMIT_NOFILE: Operation not permitted'); RUN steps still work under chroot
        isolation. $OPENOS365_ISOLATION (or BUILDAH_ISOLATION) forces a choice.
        """
        forced = os.environ.get("OPENOS365_ISOLATION") or os.environ.get("BUILDAH_ISOLATION")
        if forced:
            return forced
        if "value" in self._isolation_cache:
            return self._isolation_cache["value"]
        if probe_image is None:
            return "oci"
        ok = succeeds([self.binary, "run", "--rm", "--network=none", "--pull=never", "--", check_ref(probe_image),
                       "true"])
        value = "oci" if ok else "chroot"
        if not ok:
            log.note(f"{self.binary} cannot start containers here (cgroups/OCI runtime); "
                     "building with --isolation=chroot")
        self._isolation_cache["value"] = value
        return value

    def _build_argv(self, request: BuildRequest, iidfile: str, isolation: str) -> list[str]:
        argv = [self.binary, "build", "--layers", f"--isolation={isolation}", f"--iidfile={iidfile}",
                "-f", str(request.containerfile)]
        if isolation == "chroot":
            argv.append("--network=host")  # chroot isolation has no network namespace of its own
        for tag in request.tags:
            argv += ["-t", tag]
        for key, value in sorted(request.build_args.items()):
            argv += ["--build-arg", f"{key}={value}"]
        if request.cache_from:
            argv += [f"--cache-from={request.cache_from}"]
        if request.cache_to:
            argv += [f"--cache-to={request.cache_to}"]
        if request.no_cache:
            argv.append("--no-cache")
        if request.platform:
            argv.append(f"--platform={request.platform}")
        argv += ["--", str(request.context)]
        return argv

    def build(self, request: BuildRequest, on_line: Callable[[str], None] | None = None) -> str:
        isolation = self.isolation(request.build_args.get("PARENT"))
        watch = BuildWatch(on_line)
        with tempfile.TemporaryDirectory(prefix="openos365-build-") as tmp:
            iidfile = os.path.join(tmp, "iid")
            for attempt in (1, 2):
                try:
                    run(self._build_argv(request, iidfile, isolation), on_line=watch)
                    break
                except CommandError as exc:
                    if attempt == 1 and isolation == "chroot" and any(_MEMFD_RACE in line for line in exc.tail):
                        log.note("the engine could not seal its own binary's copy (a transient kernel race "
                                 "of chroot isolation); building again, from the steps it cached")
                        continue
                    raise watch.error(exc, request.containerfile) from exc
            return Path(iidfile).read_text().strip().removeprefix("sha256:")

    def exists(self, ref: str) -> bool:
        return succeeds([self.binary, "image", "exists", "--", check_ref(ref)])

    def inspect(self, ref: str) -> ImageInfo:
        data = self._json([self.binary, "image", "inspect", "--", check_ref(ref)])[0]
        return ImageInfo(
            id=data["Id"].removeprefix("sha256:"),
            names=tuple(data.get("RepoTags") or data.get("Names") or ()),
            created=parse_created(data["Created"]),
            config=data.get("Config") or {},
            digest=data.get("Digest"),
            layer_dirs=overlay_layer_dirs(data),
            parent=data.get("Parent") or None,
            architecture=data.get("Architecture") or None,
        )

    def tag(self, ref: str, target: str) -> None:
        run([self.binary, "tag", "--", check_ref(ref), check_ref(target)], capture=True)

    @property
    def mounts_images(self) -> bool:
        return self.binary == "podman" and userns.mode() == "root"

    @contextmanager
    def mounted(self, ref: str) -> Iterator[Path | None]:
        """`podman image mount`, as host root only. Unlike `podman export`, which drops POSIX ACLs, the mount
        shows every xattr the layers carry. In a user namespace (rootless) `cp -a` of the mount could not
        make the image's device nodes, so the tree comes from the saved layers there."""
        check_ref(ref)
        if userns.mode() != "root":
            yield None
            return
        try:
            path = run([self.binary, "image", "mount", "--", ref], capture=True).stdout.strip()
        except CommandError:
            log.note(f"cannot mount {ref}; flattening from a saved archive instead")
            yield None
            return
        try:
            yield Path(path)
        finally:
            run([self.binary, "image", "unmount", "--", ref], capture=True, check=False)

    def save(self, ref: str, path: Path, fmt: str, name: str | None = None) -> None:
        source = check_ref(ref)
        if name and name != ref:
            self.tag(ref, name)
            source = name
        run([self.binary, "save", "--format", fmt, "-o", str(path), "--", source], capture=True,
            step=f"save {fmt}")

    def import_tarball(self, path: Path, ref: str, changes: list[str], arch: str | None = None) -> str:
        argv = [self.binary, "import"] + ([f"--arch={arch}"] if arch else [])
        for change in changes:
            argv += ["--change", change]
        out = run([*argv, "--", str(path), check_ref(ref)], capture=True, step=f"import {ref}").stdout
        return out.strip().splitlines()[-1].removeprefix("sha256:")

    def pull(self, ref: str, tls_verify: bool = True, authfile: str | None = None, arch: str | None = None) -> None:
        platform = [f"--platform=linux/{arch}"] if arch else []
        try:
            run([self.binary, "pull", *platform, *_tls_flags(tls_verify, authfile), "--", check_ref(ref)],
                step=f"pull {ref}",
                hint=_REGISTRY_HINT)
        except CommandError as exc:
            raise registry_error(exc, "pull", ref) from exc

    def push(self, ref: str, dest: str, tls_verify: bool = True, authfile: str | None = None) -> None:
        try:
            run([self.binary, "push", *_tls_flags(tls_verify, authfile), "--", check_ref(ref),
                 f"docker://{check_ref(dest)}"],
                step=f"push {dest}", hint=_REGISTRY_HINT)
        except CommandError as exc:
            raise registry_error(exc, "push to", dest) from exc


class Buildah(Podman):
    """buildah shares podman's store; it has no `export`, so the tree comes from an OCI archive."""

    name = "buildah"
    binary = "buildah"
    package = "buildah"

    def isolation(self, probe_image: str | None) -> str:
        forced = os.environ.get("OPENOS365_ISOLATION") or os.environ.get("BUILDAH_ISOLATION")
        if forced:
            return forced
        # buildah cannot probe without starting a container; chroot works everywhere it runs.
        return "chroot"

    def exists(self, ref: str) -> bool:
        return succeeds([self.binary, "inspect", "--type", "image", "--", check_ref(ref)])

    def inspect(self, ref: str) -> ImageInfo:
        data = self._json([self.binary, "inspect", "--type", "image", "--", check_ref(ref)])
        oci = data.get("OCIv1") or {}
        return ImageInfo(
            id=data["FromImageID"].removeprefix("sha256:"),
            names=tuple(data.get("Images") or ()),
            created=parse_created(oci.get("created", "1970-01-01T00:00:00Z")),
            config=oci.get("config") or {},
            digest=data.get("FromImageDigest"),
            architecture=oci.get("architecture") or None,
        )

    def save(self, ref: str, path: Path, fmt: str, name: str | None = None) -> None:
        dest = f"{fmt}:{path}" + (f":{check_ref(name)}" if name else "")
        run([self.binary, "push", "--", check_ref(ref), dest], capture=True, step=f"save {fmt}")

    def import_tarball(self, path: Path, ref: str, changes: list[str], arch: str | None = None) -> str:
        check_ref(ref)
        cid = run([self.binary, "from", "scratch"], capture=True).stdout.strip()
        try:
            run([self.binary, "add", "--", cid, str(path), "/"], capture=True, step=f"import {ref}")
            if arch:
                run([self.binary, "config", f"--arch={arch}", "--", cid], capture=True)
            for change in changes:
                key, _, value = change.partition(" ")
                run([self.binary, "config", f"--{key.lower()}={value}", "--", cid], capture=True)
            return run([self.binary, "commit", "--rm", "--", cid, ref], capture=True).stdout.strip()
        except BaseException:
            run([self.binary, "rm", "--", cid], capture=True, check=False)
            raise
