"""The export pipeline: validate, check tools, resolve the source, run the exporter, publish atomically."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import cyclonedx

from . import __version__, customize, dpkg, log, tools, userns
from . import arch as arches
from .artifacts import describe, forget_manifest_entry, remove_abandoned, sha256_of, write_checksum, write_manifest
from .errors import UserError
from .exporters import EXPORTERS, ExportContext, Exporter
from .imagetree import ImageTree
from .reuse import ArtifactCache, export_key
from .rootfs import private_dir, remove_tree
from .sources import Source, resolve, with_tree


def run_exports(source: str | None, to: str | None, config_path: Path | None, output: Path | None,
                flags: dict[str, Any], **kwargs: Any) -> list[Path]:
    """One or several formats of one source into one output directory (one manifest). Every format's
    options are checked before anything is built; the image is built and flattened once (the formats
    after the first find its tree in the cache)."""
    from .config import load_export_config

    config = load_export_config(config_path, list(EXPORTERS)) if config_path else None
    formats = [f.strip() for f in to.split(",") if f.strip()] if to else list(config.formats) if config else []
    if not formats:
        raise UserError("no output format", hint="give --to FORMAT (several: --to qcow2,iso,wsl) or -c CONFIG")
    for fmt in formats:
        get_exporter(fmt)
        if formats.count(fmt) > 1:
            raise UserError(f"--to lists '{fmt}' twice", hint="give each format once")
    spec = source or (_config_source(config) if config else None)
    if not spec:
        raise UserError("no source to export", hint="give a layer directory or image reference, e.g. layers/server"
                        + (f", or 'source:' in {config.path}" if config else ""))
    outdir = output or (config.output if config and config.output else Path("out"))
    cli_flags = {k: v for k, v in flags.items() if v is not None}
    per_format = {fmt: {**(config.overrides(fmt) if config else {}), **cli_flags} for fmt in formats}
    if len(formats) == 1:
        return run_export(spec, formats[0], outdir, per_format[formats[0]], **kwargs)
    for fmt in formats:   # every format's options checked before any work
        preview = _preview_options(spec, per_format[fmt])
        get_exporter(fmt).validate(preview)
        tools.require(get_exporter(fmt).required_tools(preview), purpose=f"--to {fmt}")
    paths: list[Path] = []
    for fmt in formats:
        paths += run_export(spec, fmt, outdir, per_format[fmt], **kwargs)
    if not kwargs.get("dry_run"):
        log.done(f"{len(formats)} formats of {spec} in {outdir.resolve()} (one manifest.json): {', '.join(formats)}")
    return paths


def _config_source(config: Any) -> str | None:
    """The config's source: a path relative to the config file when it names a directory there."""
    if config.source is None:
        return None
    beside = config.path.parent / config.source
    return str(beside) if beside.is_dir() else config.source


def get_exporter(fmt: str) -> Exporter:
    if fmt not in EXPORTERS:
        raise UserError(f"unknown output format '--to {fmt}'", hint=f"use one of: {', '.join(EXPORTERS)}")
    return EXPORTERS[fmt]


def run_export(spec: str, fmt: str, outdir: Path, overrides: dict[str, Any], *, dry_run: bool,
               engine_name: str | None, workdir: Path, tls_verify: bool = True, no_cache: bool = False,
               base: str | None = None, arch: str | None = None) -> list[Path]:
    exporter = get_exporter(fmt)
    outdir = outdir.resolve()
    if dry_run:
        return _dry_run(spec, exporter, outdir, overrides, base, arch)
    _check_output_dir(outdir)
    preview = _preview_options(spec, overrides)
    exporter.validate(preview)
    tools.require(exporter.required_tools(preview), purpose=f"--to {fmt}")
    if preview.password_file:
        tools.require(["openssl"], purpose="--password-file (hashing the password)")
    started = time.monotonic()
    source = resolve(spec, engine_name=engine_name, workdir=workdir, tls_verify=tls_verify, flatten=False, base=base,
                     arch=arch)
    options = source.defaults.merged(overrides)
    customize.check_host_files(options)
    if not exporter.customizes and customize.summary(options):
        log.warn(f"--to {fmt} writes the image as it is: {customize.summary(options).lstrip(', ')} "
                 "not applied (they apply to disks, ISOs, KIS and WSL)")
    name = options.name or source.name
    scratch_prefix = f".openos365-work-{name}-{fmt}-"
    remove_abandoned(outdir, scratch_prefix)    # what a killed export of this artifact left, whatever comes next
    versions = {tool: tools.version_of(tool) for tool in exporter.required_tools(options)}
    if exporter.needs_engine and source.engine is not None:   # the engine writes these archives itself
        versions[source.engine.binary] = tools.version_of(source.engine.binary)
    versions["cyclonedx-python-lib"] = cyclonedx.__version__   # writes the SBOM
    cache = ArtifactCache(workdir)
    key = export_key(source.image_id, source.epoch, fmt, name, options, versions, userns.mode())
    # a password is never reused from (or kept in) the cache: no digest of it is stored anywhere
    cacheable = not options.password_file
    reused = cache.fetch(key, outdir) if cacheable and not no_cache else None
    if reused is not None:
        return _publish_reused(spec, source, fmt, name, outdir, *reused, started)
    if not exporter.needs_engine:
        source = with_tree(source, workdir)
    scratch = private_dir(outdir / f"{scratch_prefix}{os.getpid()}")
    ctx = ExportContext(source=source, options=options, outdir=outdir, scratch=scratch)
    forget_manifest_entry(outdir, f"{name}.{fmt}")
    try:
        with log.step(f"Exporting {spec} to {fmt}"):
            paths, details = exporter.export(ctx)
    finally:
        remove_tree(scratch)
    checksums = {p: sha256_of(p) for p in paths if p.is_file()}   # hashed once: .sha256, manifest, cache
    source = with_tree(source, workdir)   # the archive formats' SBOM and package list read the tree too
    document = _write_sbom(source, fmt, paths[0], checksums.get(paths[0]), details)
    paths, checksums = [*paths, document], {**checksums, document: sha256_of(document)}
    for path, digest in checksums.items():
        write_checksum(path, digest)
    manifest = {**_manifest(source, fmt, options, checksums, details, versions), "sbom": document.name}
    write_manifest(outdir, f"{name}.{fmt}", manifest)
    if cacheable:
        cache.store(key, paths, manifest)
    log.done(f"wrote {describe(paths)} in {time.monotonic() - started:.0f}s")
    return paths


def _write_sbom(source: Source, fmt: str, artifact: Path, digest: str | None, details: dict[str, Any]) -> Path:
    """ARTIFACT.cdx.json of the packages the artifact holds (a WSL distribution's purged ones left out)."""
    # imported here: SPDX's license list takes a second to load, and an export answered from the cache 0.3 s
    from . import sbom

    subject = sbom.Subject(artifact=artifact.name, fmt=fmt, image_id=f"sha256:{source.image_id}",
                           image_ref=source.ref, sha256=digest, epoch=source.epoch)
    tree = ImageTree(source.tree) if source.tree else None
    with log.step(f"Writing the SBOM {artifact.name}.cdx.json"):
        return sbom.write_sbom(tree, artifact, subject, tuple(details.get("purged_packages", ())))


def _publish_reused(spec: str, source: Source, fmt: str, name: str, outdir: Path, paths: list[Path],
                    manifest: dict[str, Any], started: float) -> list[Path]:
    """An earlier export's artifacts (checksums verified) published again, with their manifest entry."""
    for path in paths:
        write_checksum(path, manifest["files"][path.name]["sha256"])
    write_manifest(outdir, f"{name}.{fmt}", {**manifest, "source": spec, "image_ref": source.ref, "reused": True})
    log.done(f"reused {describe(paths)}: same image, options and tools as an earlier export "
             f"({time.monotonic() - started:.1f}s; --no-cache makes it anew)")
    return paths


def _check_output_dir(outdir: Path) -> None:
    """Fail before any build work when -o is a file or a place nothing can be written (a probe, not the
    permission bits: those do not stop root, and a read-only or pseudo file system stops everyone)."""
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"-o {outdir}: is a file, not a directory",
                        hint="choose a directory for the artifacts (it is created when missing)")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=outdir).close()
    except OSError as exc:
        raise UserError(f"-o {outdir}: cannot write there ({exc.strerror or exc})",
                        hint="choose a directory you may write to, e.g. -o out") from exc


def _preview_options(spec: str, overrides: dict[str, Any]):  # type: ignore[no-untyped-def]
    from .config import ExportOptions
    from .layers import is_layer_dir

    defaults = ExportOptions()
    if is_layer_dir(Path(spec)):
        from .config import load_layer

        defaults = load_layer(Path(spec)).export
    return defaults.merged(overrides)


def _dry_run(spec: str, exporter: Exporter, outdir: Path, overrides: dict[str, Any], base: str | None,
             arch: str | None) -> list[Path]:
    options = _preview_options(spec, overrides)
    from .build import variant_tag
    from .sources import name_from_ref

    exporter.validate(options)
    default_name = Path(spec).name if Path(spec).is_dir() else name_from_ref(spec)
    tag = variant_tag(Path(spec), base, arch) if Path(spec).is_dir() else None
    if tag:
        default_name = f"{default_name}-{tag}"
    placeholder = Source(spec=spec, name=options.name or default_name,
                         image_id="<image id>", ref=None, tree=Path("<flattened tree>"), epoch=0, config={},
                         layer=None, engine=None)
    ctx = ExportContext(source=placeholder, options=options, outdir=outdir, scratch=outdir / ".work")
    log.info(f"plan for --to {exporter.name} {spec}:")
    log.info(f"  1. build or find {spec} and flatten it (cached by image id)")
    steps = [*exporter.plan(ctx), "write the SBOM (CycloneDX 1.5: the dpkg packages) beside the artifact as "
             "ARTIFACT.cdx.json"]
    for number, line in enumerate(steps, 2):
        log.info(f"  {number}. {line}")
    absent = tools.missing(exporter.required_tools(options))
    if absent:
        log.warn("missing tools: " + ", ".join(f"{t.command} ({t.debian})" for t in absent))
    return []


def _manifest(source: Source, fmt: str, options: Any, checksums: dict[Path, str], details: dict[str, Any],
              versions: dict[str, str | None]) -> dict[str, Any]:
    opts = {k: v for k, v in vars(options).items() if v not in (None, ())}
    if opts.pop("password_file", None):
        opts["password"] = "set from a file (not recorded)"
    return {
        "format": fmt,
        "source": source.spec,
        "image_id": f"sha256:{source.image_id}",
        "image_ref": source.ref,
        "source_date_epoch": source.epoch,
        "options": opts,
        "files": {p.name: {"sha256": digest, "size": p.stat().st_size} for p, digest in checksums.items()},
        "architecture": arches.of_tree(ImageTree(source.tree)).name if source.tree else None,
        "packages": dpkg.installed_packages(ImageTree(source.tree)) if source.tree else [],
        "tools": {"openos365": __version__, "python": platform.python_version(), **versions},
        **details,
    }
