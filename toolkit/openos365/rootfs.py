"""Image reference -> flattened root tree, cached by image id.

Sources: a local image of the engine (streamed `export`), or an OCI/docker archive or OCI layout on disk
(layers applied in order by tarapply, whiteouts included), which needs no engine at all.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import log
from .engine import Engine
from .errors import UserError
from .runner import run, stream_stdout
from .tarapply import LayerApplier

ARCHIVE_PREFIXES = ("oci-archive:", "docker-archive:", "oci:")
_KEEP_TREES = 3


@dataclass(frozen=True)
class ArchiveImage:
    """An image in an archive file or OCI layout directory: its config and layer blobs."""

    transport: str                 # oci-archive | docker-archive | oci
    path: Path
    config: dict[str, Any]
    config_digest: str
    layers: tuple[tuple[str, str], ...]   # (member path in archive or file path, media type)

    @property
    def id(self) -> str:
        return self.config_digest.removeprefix("sha256:")


def _blob_path(digest: str) -> str:
    algo, _, hexdigest = digest.partition(":")
    return f"blobs/{algo}/{hexdigest}"


class _Reader:
    """Reads named members of a tar archive, or files of a directory, uniformly."""

    def __init__(self, path: Path):
        self.path = path
        self.tar = None if path.is_dir() else tarfile.open(path, "r:")

    def open(self, name: str) -> IO[bytes]:
        if self.tar is None:
            return open(self.path / name, "rb")
        try:
            member = self.tar.extractfile(name)
        except KeyError:
            member = self.tar.extractfile(f"./{name}")  # some writers store ./index.json
        if member is None:
            raise UserError(f"{self.path}: '{name}' is not a file in the archive")
        return member

    def json(self, name: str) -> Any:
        try:
            with self.open(name) as fh:
                return json.load(fh)
        except KeyError as exc:
            raise UserError(f"{self.path}: not an image archive ('{name}' is missing)",
                            hint="give an oci-archive, docker-archive or OCI layout written by "
                            "podman save, docker save or skopeo") from exc

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def parse_archive_ref(spec: str) -> tuple[str, Path]:
    transport, _, rest = spec.partition(":")
    path = Path(rest.split(":", 1)[0] if not Path(rest).exists() else rest)
    if not path.exists():
        raise UserError(f"{spec}: {path} does not exist", hint="check the path after the transport prefix")
    return transport, path


def read_archive(spec: str) -> ArchiveImage:
    try:
        return _read_archive(spec)
    except (OSError, tarfile.TarError, KeyError, IndexError, ValueError) as exc:
        raise UserError(f"{spec}: not a readable image archive ({exc})",
                        hint="give an oci-archive, docker-archive or OCI layout written by podman save, "
                        "docker save or skopeo (uncompressed tar)") from exc


def _read_archive(spec: str) -> ArchiveImage:
    transport, path = parse_archive_ref(spec)
    reader = _Reader(path)
    try:
        if transport == "docker-archive":
            manifest = reader.json("manifest.json")[0]
            config_name = manifest["Config"]
            config = reader.json(config_name)
            digest = "sha256:" + Path(config_name).name.removesuffix(".json")
            layers = tuple((name, "tar") for name in manifest["Layers"])
        else:
            index = reader.json("index.json")
            manifest = reader.json(_blob_path(_pick(index["manifests"], spec)["digest"]))
            if "manifests" in manifest:  # an image index: the linux/amd64 image
                manifest = reader.json(_blob_path(_pick(manifest["manifests"], spec)["digest"]))
            digest = manifest["config"]["digest"]
            config = reader.json(_blob_path(digest))
            layers = tuple((_blob_path(layer["digest"]), layer.get("mediaType", "")) for layer in
                           manifest["layers"])
    finally:
        reader.close()
    return ArchiveImage(transport, path, config, digest, layers)


def _pick(manifests: list[dict[str, Any]], spec: str) -> dict[str, Any]:
    """The manifest a reference means: by tag (`oci:DIR:TAG`), else linux/amd64, else the only one."""
    tag = spec.split(":", 2)[2] if spec.count(":") >= 2 else None
    if tag:
        named = [m for m in manifests if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name")
                 in (tag, tag.rsplit(":", 1)[-1])]
        if not named:
            raise UserError(f"{spec}: no image tagged '{tag}' in it")
        return named[0]
    amd64 = [m for m in manifests if (m.get("platform") or {}).get("architecture") in ("amd64", None)]
    if len(amd64) > 1 and any("platform" in m for m in amd64):
        amd64 = [m for m in amd64 if (m.get("platform") or {}).get("architecture") == "amd64"]
    if len(amd64) != 1:
        raise UserError(f"{spec}: holds {len(manifests)} images; name one", hint=f"use {spec}:TAG")
    return amd64[0]


def _apply_archive(image: ArchiveImage, applier: LayerApplier) -> None:
    reader = _Reader(image.path)
    try:
        for index, (name, media_type) in enumerate(image.layers, 1):
            with log.step(f"Layer {index}/{len(image.layers)}"), _layer_stream(reader, name, media_type) as fh:
                applier.apply(fh, f"{image.path}:{name}")
    finally:
        reader.close()


@contextmanager
def _layer_stream(reader: _Reader, name: str, media_type: str) -> Iterator[IO[bytes]]:
    if media_type.endswith("zstd"):  # tarfile has no zstd: decompress through the zstd tool
        if reader.tar is not None:
            raise UserError(f"{reader.path}: zstd layers inside an archive are not supported",
                            hint="convert it: skopeo copy --dest-compress-format gzip ...")
        with stream_stdout(["zstd", "-dc", str(reader.path / name)]) as fh:
            yield fh
        return
    with reader.open(name) as fh:
        yield fh


class TreeCache:
    """Flattened trees under <workdir>/rootfs/<image id>-<epoch>/, complete or absent."""

    def __init__(self, workdir: Path):
        self.base = workdir / "rootfs"

    def path(self, image_id: str, epoch: int) -> Path:
        return self.base / f"{image_id[:32]}-{epoch}"

    def get(self, image_id: str, epoch: int) -> Path | None:
        tree = self.path(image_id, epoch)
        return tree / "tree" if (tree / "complete").exists() else None

    @contextmanager
    def fill(self, image_id: str, epoch: int) -> Iterator[Path]:
        final = self.path(image_id, epoch)
        temp = final.with_name(final.name + f".tmp-{os.getpid()}")
        self._remove_abandoned()
        shutil.rmtree(temp, ignore_errors=True)
        (temp / "tree").mkdir(parents=True)
        try:
            yield temp / "tree"
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        (temp / "complete").write_text(f"{image_id}\n")
        shutil.rmtree(final, ignore_errors=True)
        temp.rename(final)
        self._prune(keep=final)

    def _remove_abandoned(self) -> None:
        """Half-filled trees of processes that were killed."""
        if not self.base.is_dir():
            return
        for temp in self.base.glob("*.tmp-*"):
            pid = temp.name.rpartition(".tmp-")[2]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(temp, ignore_errors=True)

    def _prune(self, keep: Path) -> None:
        trees = sorted((p for p in self.base.iterdir() if (p / "complete").exists() and p != keep),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for old in trees[_KEEP_TREES - 1:]:
            shutil.rmtree(old, ignore_errors=True)


def flatten_engine_image(engine: Engine, ref: str, image_id: str, epoch: int, cache: TreeCache,
                         workdir: Path) -> Path:
    """The engine's own view of the image (image mount, root) copied, or else its saved layers applied."""
    cached = cache.get(image_id, epoch)
    if cached is not None:
        log.note(f"flattened tree of {image_id[:12]} is cached: {cached}")
        os.utime(cached.parent)
        return cached
    with log.step(f"Flattening {ref}"), cache.fill(image_id, epoch) as tree:
        started = time.monotonic()
        with engine.mounted(ref) as mount:
            if mount is not None:
                run(["cp", "-a", f"{mount}/.", f"{tree}/"], step=f"copy the root tree of {ref}", capture=True)
        if mount is not None:
            clamp_mtimes(tree, epoch)
            os.chmod(tree, 0o755)
            log.note(f"copied from the engine's mount in {time.monotonic() - started:.1f}s")
        else:
            _flatten_saved(engine, ref, tree, epoch, workdir, started)
    return cache.path(image_id, epoch) / "tree"


def _flatten_saved(engine: Engine, ref: str, tree: Path, epoch: int, workdir: Path, started: float) -> None:
    fmt = "docker-archive" if engine.name == "docker" else "oci-archive"
    archive = workdir / f"tmp-{os.getpid()}.{fmt}.tar"
    try:
        engine.save(ref, archive, fmt)
        applier = LayerApplier(str(tree), clamp_mtime=epoch)
        _apply_archive(read_archive(f"{fmt}:{archive}"), applier)
        _report(applier, time.monotonic() - started)
    finally:
        archive.unlink(missing_ok=True)


def clamp_mtimes(tree: Path, epoch: int) -> None:
    """Anything newer than SOURCE_DATE_EPOCH is set to it, so equal content gives equal artifacts."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if os.lstat(path).st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
    os.utime(tree, (epoch, epoch))


def flatten_archive(spec: str, epoch: int | None, cache: TreeCache) -> tuple[Path, ArchiveImage, int]:
    image = read_archive(spec)
    epoch = epoch if epoch is not None else _created(image.config)
    cached = cache.get(image.id, epoch)
    if cached is not None:
        return cached, image, epoch
    with log.step(f"Flattening {spec}"), cache.fill(image.id, epoch) as tree:
        started = time.monotonic()
        applier = LayerApplier(str(tree), clamp_mtime=epoch)
        _apply_archive(image, applier)
        _report(applier, time.monotonic() - started)
    return cache.path(image.id, epoch) / "tree", image, epoch


def _created(config: dict[str, Any]) -> int:
    from .engine.base import parse_created

    created = config.get("created")
    return parse_created(created) if created else 0


def _report(applier: LayerApplier, seconds: float) -> None:
    stats = applier.finish()
    log.note(f"{stats.entries} entries, {log.human_size(stats.bytes)} in {seconds:.1f}s")
    if stats.skipped_devices:
        log.warn(f"{stats.skipped_devices} device nodes skipped: creating them needs root")
    if stats.skipped_xattrs:
        log.warn(f"{stats.skipped_xattrs} extended attributes could not be set (needs root or a "
                 "filesystem with xattr support)")


def copy_tree(source: Path, dest: Path, *, link_files: bool = False) -> None:
    """A private copy of a cached tree for an exporter to customise (reflinks where possible).

    link_files=True hard-links the files instead (directories are still copied): ten times faster, for
    exporters that only read the files and replace (never edit in place) the few they change, as
    boot.write_file and boot.remove do.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    mode = "--link" if link_files else "--reflink=auto"
    run(["cp", "-a", mode, f"{source}/.", f"{dest}/"], step="copy the root tree", capture=True)
