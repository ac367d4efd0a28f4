"""--to dir and --to tar: the flattened root tree itself (the base of every other exporter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import log
from ..artifacts import atomic_path
from ..disk.filesystems import tar_argv
from ..rootfs import copy_tree
from ..runner import run
from .base import ExportContext, Exporter


class DirExporter(Exporter):
    name = "dir"
    description = "the flattened root tree as a directory"
    tools = ("cp",)

    def plan(self, ctx: ExportContext) -> list[str]:
        return [f"copy the flattened tree of {ctx.source.spec} to {ctx.outdir / ctx.name}"]

    def export(self, ctx: ExportContext) -> tuple[list[Path], dict[str, Any]]:
        final = ctx.outdir / ctx.name
        with log.step("Copying the root tree"), atomic_path(final) as temp:
            copy_tree(ctx.source.tree, temp)
        return [final], {"format": "dir"}


class TarExporter(Exporter):
    name = "tar"
    description = "the flattened root tree as a POSIX tar (owners, modes, xattrs, hard links kept)"
    tools = ("tar",)

    def plan(self, ctx: ExportContext) -> list[str]:
        return [f"tar the flattened tree of {ctx.source.spec} into {ctx.outdir / (ctx.name + '.tar')}"]

    def export(self, ctx: ExportContext) -> tuple[list[Path], dict[str, Any]]:
        final = ctx.outdir / f"{ctx.name}.tar"
        with log.step("Writing the root tree tar"), atomic_path(final) as temp:
            run(tar_argv(ctx.source.tree, ctx.source.epoch, temp), step="tar", capture=True)
        return [final], {"format": "tar"}
