"""--to docker and --to oci: the image itself, as an archive a container engine loads.

- docker: NAME.docker.tar, a docker-archive that `docker load` and `podman load` accept, tagged with the
  image's name (its reference, or localhost/openos365/NAME:latest for an image known only by id);
- oci: NAME.oci.tar, an OCI image layout in a tar (`skopeo inspect oci-archive:...`, `podman load`), with
  the same name in its `org.opencontainers.image.ref.name` annotation.

Both carry the engine's image unchanged (config with Entrypoint, Cmd, Env, Labels; the layers), not a
re-packed flattened tree. An image in the engine's store is written by the engine (`podman save`); an
archive source (oci-archive:, docker-archive:, oci:) is converted by skopeo, no engine needed.

podman's docker-archive is byte-stable; its oci-archive stores the current time in its tar headers, so the
OCI layout is unpacked and tarred again with sorted names and times clamped to SOURCE_DATE_EPOCH: the same
image gives the same bytes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .. import log, tools
from ..artifacts import atomic_path
from ..disk.filesystems import tar_argv
from ..rootfs import ARCHIVE_PREFIXES
from ..runner import run
from .base import ExportContext, Exporter

_HEX_ID = re.compile(r"^(sha256:)?[0-9a-f]{12,64}$")


def archive_name(ref: str | None, name: str) -> str:
    """name:tag stored in the archive: the image reference when it has one, with a tag (not a digest)."""
    if not ref or _HEX_ID.match(ref):
        return f"localhost/openos365/{name}:latest"
    repo = ref.removeprefix("docker://").split("@", 1)[0]
    return repo if ":" in repo.rsplit("/", 1)[-1] else f"{repo}:latest"


def skopeo_copy(source: str, dest: str) -> None:
    tools.require(["skopeo"], purpose="converting an image archive")
    run(["skopeo", "copy", "--quiet", source, dest], capture=True, step=f"skopeo copy to {dest.split(':')[0]}",
        hint="check that the source is a complete image archive (skopeo inspect SOURCE)")


class _ArchiveExporter(Exporter):
    needs_engine = True
    transport = ""         # docker-archive | oci-archive
    suffix = ""

    def output(self, ctx: ExportContext) -> Path:
        return ctx.outdir / f"{ctx.name}.{self.suffix}"

    def every_tool(self) -> list[str]:
        return ["podman", "skopeo", *self.tools]   # the engine saves its images; skopeo converts archives

    def plan(self, ctx: ExportContext) -> list[str]:
        how = "skopeo copy" if ctx.source.spec.startswith(ARCHIVE_PREFIXES) else "the engine (podman save)"
        return [f"write {self.transport} of {ctx.source.spec} with {how}, tagged "
                f"{archive_name(ctx.source.ref, ctx.name)}", f"rename it to {self.output(ctx)}"]

    def export(self, ctx: ExportContext) -> tuple[list[Path], dict[str, Any]]:
        final = self.output(ctx)
        name = archive_name(ctx.source.ref, ctx.name)
        with log.step(f"Writing the {self.transport} {final.name} ({name})"), atomic_path(final) as temp:
            self.write(ctx, name, temp)
        return [final], {"archive": self.transport, "image_name": name}

    def write(self, ctx: ExportContext, name: str, temp: Path) -> None:
        raise NotImplementedError


class DockerArchiveExporter(_ArchiveExporter):
    name = "docker"
    description = "docker-archive of the image (docker load / podman load), config and name:tag kept"
    transport = "docker-archive"
    suffix = "docker.tar"

    def write(self, ctx: ExportContext, name: str, temp: Path) -> None:
        source = ctx.source
        if source.engine is not None and source.ref is not None:
            source.engine.save(source.ref, temp, "docker-archive", name=name)
        else:
            skopeo_copy(source.spec, f"docker-archive:{temp}:{name}")


class OciArchiveExporter(_ArchiveExporter):
    name = "oci"
    description = "OCI archive of the image (skopeo, podman load), config and name kept, reproducible"
    transport = "oci-archive"
    suffix = "oci.tar"
    tools = ("tar",)

    def write(self, ctx: ExportContext, name: str, temp: Path) -> None:
        source = ctx.source
        layout = ctx.scratch_dir("oci-layout")
        if source.engine is not None and source.ref is not None:
            archive = ctx.scratch / "engine.oci.tar"
            source.engine.save(source.ref, archive, "oci-archive", name=name)
            run(["tar", "--extract", "--file", str(archive), "--directory", str(layout)], capture=True,
                step="unpack the OCI layout")
            archive.unlink()
        else:
            skopeo_copy(source.spec, f"oci:{layout}:{name}")
        # members named like podman's own (index.json, blobs/...), not ./index.json: some readers need that
        argv = [*tar_argv(layout, source.epoch, temp)[:-1], "--owner=0", "--group=0", "."]  # same bytes for any user
        run([*argv[:-1], *sorted(os.listdir(layout))], capture=True, step="tar the OCI layout")
