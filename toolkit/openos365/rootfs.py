"""Image reference -> flattened root tree, cached by a digest openos365 computed itself.

Sources: a local image of the engine (its own read-only mount as root, else its saved layers), or an
OCI/docker archive or OCI layout on disk, which needs no engine at all. Archive content is untrusted: every
blob is checked against its digest as it streams (manifest and config against their descriptors, each
layer against the manifest's digest and the config's diff_id), and a mismatch, a missing blob, a truncated
archive or a malformed digest is an error naming the archive and the blob, before the tree is published.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import log, userns
from .config import parse_size
from .engine import Engine, ImageInfo
from .errors import UserError
from .imagetree import ImageTree, TreeError
from .runner import pipe_through, run
from .tarapply import LayerApplier, UnsupportedLayerDir

ARCHIVE_PREFIXES = ("oci-archive:", "docker-archive:", "oci:")
_KEEP_TREES = 4     # an image, the build step below its top layer, and the two before
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_MAX_JSON = 16 << 20
_GZIP, _ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
_ARCHIVE_HINT = ("give an oci-archive, docker-archive or OCI layout written by podman save, docker save or "
                 "skopeo; if it came over a network, fetch it again")


@dataclass(frozen=True)
class Layer:
    name: str               # member of the archive, or file of the layout
    diff_id: str            # digest of the uncompressed tar (the image config's rootfs.diff_ids)
    digest: str | None      # digest of the blob as stored (OCI descriptors); docker-archive has none


@dataclass(frozen=True)
class ArchiveImage:
    """An image in an archive file or OCI layout directory: its verified config and its layers."""

    transport: str                 # oci-archive | docker-archive | oci
    path: Path
    config: dict[str, Any]
    config_digest: str             # computed from the config's bytes
    layers: tuple[Layer, ...]

    @property
    def id(self) -> str:
        return self.config_digest.partition(":")[2]


def check_digest(digest: Any, where: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise UserError(f"{where}: '{digest}' is not a digest (sha256:<64 hex> or sha512:<128 hex>)",
                        hint="the archive is damaged or was not written by a container tool; " + _ARCHIVE_HINT)
    return digest


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _blob_path(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


class _Reader:
    """Reads named members of a tar archive, or files of a layout directory (through imagetree: the
    layout is untrusted too), uniformly."""

    def __init__(self, path: Path):
        self.path = path
        self.dir = ImageTree(path, str(path)) if path.is_dir() else None
        self.tar = None if self.dir else tarfile.open(path, "r:")

    def _member(self, name: str) -> tarfile.TarInfo:
        assert self.tar is not None
        for candidate in (name, f"./{name}"):   # some writers store ./index.json
            try:
                return self.tar.getmember(candidate)
            except KeyError:
                continue
        raise KeyError(name)

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        try:
            if self.dir is not None:
                with self.dir.open(name) as fh:
                    yield fh
                return
            member = self.tar.extractfile(self._member(name)) if self.tar else None
        except (KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError, TreeError) as exc:
            raise UserError(f"{self.path}: '{name}' is missing", hint=_ARCHIVE_HINT) from exc
        if member is None:
            raise UserError(f"{self.path}: '{name}' is not a file in the archive", hint=_ARCHIVE_HINT)
        with member:
            yield member

    def size(self, name: str) -> int:
        with self.open(name):   # the same errors as open for a missing blob
            return self.dir.size(name) if self.dir is not None else self._member(name).size

    def read(self, name: str, digest: str | None = None) -> bytes:
        """A small blob (JSON), checked against digest when one is given."""
        with self.open(name) as fh:
            data = fh.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise UserError(f"{self.path}: '{name}' is larger than a manifest or config can be", hint=_ARCHIVE_HINT)
        if digest is not None and digest_of(data, digest.partition(":")[0]) != digest:
            raise UserError(f"{self.path}: blob '{name}' does not match its digest {digest}",
                            hint="the archive is damaged or was altered; " + _ARCHIVE_HINT)
        return data

    def json(self, name: str, digest: str | None = None) -> Any:
        try:
            return json.loads(self.read(name, digest))
        except ValueError as exc:
            raise UserError(f"{self.path}: '{name}' is not valid JSON ({exc})", hint=_ARCHIVE_HINT) from exc

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
    except (OSError, tarfile.TarError, KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{spec}: not a readable image archive ({type(exc).__name__}: {exc})",
                        hint=_ARCHIVE_HINT) from exc


def _read_archive(spec: str) -> ArchiveImage:
    transport, path = parse_archive_ref(spec)
    reader = _Reader(path)
    try:
        if transport == "docker-archive":
            manifest = reader.json("manifest.json")[0]
            config_bytes = reader.read(str(manifest["Config"]))
            names = [str(name) for name in manifest["Layers"]]
            digests: list[str | None] = [None] * len(names)
        else:
            index = reader.json("index.json")
            descriptor = _pick(index["manifests"], spec)
            manifest = reader.json(_blob_path(descriptor["digest"]), descriptor["digest"])
            if "manifests" in manifest:  # an image index: the host architecture's image
                descriptor = _pick(manifest["manifests"], spec)
                manifest = reader.json(_blob_path(descriptor["digest"]), descriptor["digest"])
            config_digest = check_digest(manifest["config"]["digest"], f"{spec}: config")
            config_bytes = reader.read(_blob_path(config_digest), config_digest)
            digests = [check_digest(layer["digest"], f"{spec}: layer") for layer in manifest["layers"]]
            names = [_blob_path(d) for d in digests if d]
    finally:
        reader.close()
    config = json.loads(config_bytes)
    diff_ids = [check_digest(d, f"{spec}: config rootfs.diff_ids") for d in config["rootfs"]["diff_ids"]]
    if len(diff_ids) != len(names):
        raise UserError(f"{spec}: the manifest lists {len(names)} layers but the config has {len(diff_ids)} "
                        "diff_ids", hint=_ARCHIVE_HINT)
    layers = tuple(Layer(n, i, d) for n, i, d in zip(names, diff_ids, digests, strict=True))
    return ArchiveImage(transport, path, config, digest_of(config_bytes), layers)


def _pick(manifests: list[dict[str, Any]], spec: str) -> dict[str, Any]:
    """The manifest a reference means: by tag (`oci:DIR:TAG`), else the host's architecture, else the only one."""
    from .arch import host

    tag = spec.split(":", 2)[2] if spec.count(":") >= 2 else None
    if tag:
        named = [m for m in manifests if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name")
                 in (tag, tag.rsplit(":", 1)[-1])]
        if not named:
            raise UserError(f"{spec}: no image tagged '{tag}' in it")
        chosen = named[0]
    else:
        native = host().name
        matching = [m for m in manifests if (m.get("platform") or {}).get("architecture") in (native, None)]
        if len(matching) > 1 and any("platform" in m for m in matching):
            matching = [m for m in matching if (m.get("platform") or {}).get("architecture") == native]
        if len(matching) != 1:
            raise UserError(f"{spec}: holds {len(manifests)} images; name one", hint=f"use {spec}:TAG")
        chosen = matching[0]
    check_digest(chosen.get("digest"), f"{spec}: manifest")
    return chosen


# --- layers, streamed and verified ----------------------------------------------------------------------

class _Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: IO[bytes], algorithm: str):
        self.raw, self.hash, self.count = raw, hashlib.new(algorithm), 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def digest(self) -> str:
        return f"{self.hash.name}:{self.hash.hexdigest()}"


def layer_limit(compressed: int) -> int:
    """How far one layer may expand: $OPENOS365_LAYER_LIMIT, else 4x its compressed size + 64 GiB."""
    configured = os.environ.get("OPENOS365_LAYER_LIMIT")
    if configured:
        return parse_size(configured, where="OPENOS365_LAYER_LIMIT")
    return 4 * compressed + (64 << 30)


@contextmanager
def _verified_tar(reader: _Reader, layer: Layer, source: str) -> Iterator[IO[bytes]]:
    """The layer's uncompressed tar stream; on exit, both digests are checked."""
    with reader.open(layer.name) as raw:
        magic = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
        outer = _Hashing(raw, (layer.digest or layer.diff_id).partition(":")[0])
        with _decompressed(outer, magic, source) as plain:
            inner = _Hashing(plain, layer.diff_id.partition(":")[0])
            yield inner
            inner.drain()
        outer.drain()
    for what, expected, stream in (("blob", layer.digest, outer), ("uncompressed layer", layer.diff_id, inner)):
        if expected is not None and stream.digest() != expected:
            raise UserError(f"{source}: the {what} does not match its digest {expected} (got {stream.digest()})",
                            hint="the archive is damaged or was altered; " + _ARCHIVE_HINT)


@contextmanager
def _decompressed(stream: _Hashing, magic: bytes, source: str) -> Iterator[IO[bytes]]:
    if magic.startswith(_GZIP):
        with gzip.GzipFile(fileobj=stream, mode="rb") as plain:
            yield plain
    elif magic.startswith(_ZSTD):
        with pipe_through(["zstd", "-dc"], stream, step=f"decompress {source}") as plain:
            yield plain
    else:
        yield stream


def apply_archive(image: ArchiveImage, applier: LayerApplier) -> None:
    reader = _Reader(image.path)
    try:
        for index, layer in enumerate(image.layers, 1):
            source = f"{image.path}:{layer.name}"
            with log.step(f"Layer {index}/{len(image.layers)}"):
                limit = layer_limit(reader.size(layer.name))
                try:
                    with _verified_tar(reader, layer, source) as tar:
                        applier.apply(tar, source, limit=limit)
                except (OSError, EOFError, gzip.BadGzipFile) as exc:
                    raise UserError(f"{source}: cannot read the layer ({type(exc).__name__}: {exc})",
                                    hint="the archive is damaged or truncated; " + _ARCHIVE_HINT) from exc
    finally:
        reader.close()


# --- the cache ------------------------------------------------------------------------------------------

def remove_tree(path: Path) -> None:
    """rm -rf for our own scratch and cache trees, also when they hold 0555 directories or 0000 files
    (a normal user cannot delete entries of a directory it may not write)."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return

    def make_writable(_function: Callable[..., Any], failed: str, _exc: Any) -> None:
        parent = os.path.dirname(failed)
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, 0o700)
            shutil.rmtree(failed, onerror=make_writable)
        else:
            os.unlink(failed)

    shutil.rmtree(path, onerror=make_writable)


def private_dir(path: Path) -> Path:
    """A directory only its owner can enter (cache and scratch: they hold setuid files and device nodes)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class TreeCache:
    """Flattened trees under <workdir>/rootfs/<kind>-<digest>-<epoch>-<how>/, complete or absent.

    kind is `engine` (the engine's image id) or `archive` (the config digest openos365 computed), so an
    archive can never claim an engine image's entry; how is `root`, `userns` (root in a user namespace: owners
    kept, no device nodes) or `user` (no owners), never mixed. A fill
    lock serialises two processes flattening the same image (the second then uses the first's tree); a use
    lock, held for the life of the process, keeps pruning away from a tree in use."""

    def __init__(self, workdir: Path):
        self.base = workdir / "rootfs"
        self._held: list[int] = []

    def key(self, kind: str, digest: str, epoch: int) -> str:
        return f"{kind}-{digest.partition(':')[2] or digest}"[:72] + f"-{epoch}-{userns.mode()}"

    def get(self, key: str) -> Path | None:
        tree = self.base / key
        if not (tree / "complete").exists():
            return None
        self._lock(key, "use", fcntl.LOCK_SH)
        return tree / "tree" if (tree / "complete").exists() else None

    @staticmethod
    def record_origin(tree: Path, layers: tuple[str, ...], epoch: int, clamped: int) -> None:
        """What a later image built on this one needs to start from this tree: the engine's layer
        directories it holds, its epoch, and whether any mtime was clamped to it."""
        if layers:
            (tree.parent / "origin.json").write_text(json.dumps({"layers": list(layers), "epoch": epoch,
                                                                 "clamped": clamped}))

    def nearest_base(self, layers: tuple[str, ...], epoch: int) -> tuple[Path, dict[str, Any]] | None:
        """The cached engine tree whose layers are the longest prefix of layers and whose times read the
        same under epoch (equal epochs, or none clamped and ours not older), taken for use; or None."""
        best: tuple[str, dict[str, Any]] | None = None
        for entry in self.base.glob(f"engine-*-{userns.mode()}") if self.base.is_dir() else ():
            try:
                origin = json.loads((entry / "origin.json").read_text())
                held, their_epoch, clamped = list(origin["layers"]), int(origin["epoch"]), int(origin["clamped"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not held or len(held) > len(layers) or held != list(layers[:len(held)]):
                continue
            if their_epoch != epoch and (clamped or their_epoch > epoch):
                continue
            if best is None or len(held) > len(best[1]["layers"]):
                best = (entry.name, origin)
        if best is None:
            return None
        tree = self.get(best[0])
        if tree is None:
            return None
        os.utime(tree.parent)    # recently used: pruned last
        return tree, best[1]

    def tree(self, key: str, make: Callable[[Path], None]) -> Path:
        """The complete tree for key, made by make(empty dir) unless another process made it already."""
        cached = self.get(key)
        if cached is not None:
            return cached
        private_dir(self.base)
        fill = self._lock(key, "fill", fcntl.LOCK_EX, wait_note=True)
        try:
            cached = self.get(key)
            if cached is not None:
                return cached
            for abandoned in self.base.glob(f"{key}.tmp-*"):   # we hold the fill lock: nobody owns these
                remove_tree(abandoned)
            temp = private_dir(self.base / f"{key}.tmp-{os.getpid()}")
            private_dir(temp / "tree")
            try:
                make(temp / "tree")
            except BaseException:
                remove_tree(temp)
                raise
            (temp / "complete").write_text(f"{key}\n")
            remove_tree(self.base / key)
            temp.rename(self.base / key)
            self._lock(key, "use", fcntl.LOCK_SH)
        finally:
            self._release(fill)
        self._prune(keep=key)
        return self.base / key / "tree"

    def _lock(self, key: str, kind: str, mode: int, *, wait_note: bool = False) -> int:
        fd = os.open(private_dir(self.base) / f"{key}.{kind}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait_note:
                log.info("another openos365 is flattening the same image; waiting for it")
            fcntl.flock(fd, mode)
        if kind == "use":
            self._held.append(fd)
        return fd

    @staticmethod
    def _release(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def _try_exclusive(self, key: str, kind: str) -> int | None:
        fd = os.open(self.base / f"{key}.{kind}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _prune(self, keep: str) -> None:
        """Drop all but the newest trees, skipping any that another process is using or filling.

        A dropped tree is renamed away first (it is gone for every reader at once, and a kill midway leaves
        no half tree under its key), then deleted in a background thread while the export goes on; the
        interpreter waits for that thread before it exits."""
        doomed = [_claim(p) for p in self.base.iterdir() if ".tmp-" in p.name and _abandoned(p.name)]
        trees = sorted((p for p in self.base.iterdir()
                        if ".tmp-" not in p.name and p.name != keep and (p / "complete").exists()),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for old in trees[_KEEP_TREES - 1:]:
            locks = [self._try_exclusive(old.name, kind) for kind in ("use", "fill")]
            if None not in locks:
                doomed.append(_claim(old))
                for kind in ("use", "fill"):    # held: nobody waits on them
                    (self.base / f"{old.name}.{kind}.lock").unlink(missing_ok=True)
            for fd in locks:
                if fd is not None:
                    self._release(fd)
        claimed = [p for p in doomed if p is not None]
        if claimed:
            threading.Thread(target=_remove_quietly, args=(claimed,), name="prune trees").start()


def _claim(path: Path) -> Path | None:
    """path renamed to a name of this process (which no other process, nor this one, takes as abandoned);
    None when another process claimed it first."""
    try:
        return path.rename(path.with_name(f"{path.name.partition('.tmp-')[0]}.tmp-{os.getpid()}-gone-"
                                          f"{secrets.token_hex(4)}"))
    except FileNotFoundError:
        return None


def _remove_quietly(paths: list[Path]) -> None:
    for path in paths:
        try:
            remove_tree(path)
        except OSError as exc:   # a later run removes what is left (its owner is gone by then)
            log.note(f"could not remove the pruned tree {path.name}: {exc}")


def _abandoned(name: str) -> bool:
    """A `.tmp-PID` entry whose process is gone."""
    pid = name.rpartition(".tmp-")[2].split("-")[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# --- flattening -----------------------------------------------------------------------------------------

def flatten_engine_image(engine: Engine, ref: str, image_id: str, epoch: int, cache: TreeCache,
                         workdir: Path, *, from_parent: bool = True) -> Path:
    """The image's tree, made the cheapest way the engine allows:
    - from a cached tree of an image whose layers it starts with, plus its further layers (overlay storage);
    - else, for an image built in steps (--layers), from the tree of the step before its top layer, itself
      made (and cached) first: a change in the last steps of a Containerfile then costs its own layer;
    - else the engine's own view of the image (image mount, as root) copied;
    - else its saved layers applied (rootless)."""
    key = cache.key("engine", image_id, epoch)
    cached = cache.get(key)
    if cached is not None:
        log.note(f"flattened tree of {image_id[:12]} is cached: {cached}")
        os.utime(cached.parent)
        return cached

    def make(tree: Path) -> None:
        with log.step(f"Flattening {ref}"):
            started = time.monotonic()
            info = engine.inspect(ref) if engine.mounts_images else None
            layers = info.layer_dirs if info else ()
            if layers and _derive(cache, tree, layers, epoch, ref):
                return
            parent = _step_before_top_layer(engine, info) if info and from_parent else None
            if parent is not None:
                log.note(f"flattening the build step before the top layer first ({parent[:12]})")
                flatten_engine_image(engine, parent, parent, epoch, cache, workdir, from_parent=False)
                if _derive(cache, tree, layers, epoch, ref):
                    return
            with engine.mounted(ref) as mount:
                if mount is not None:
                    run(["cp", "-a", f"{mount}/.", f"{tree}/"], step=f"copy the root tree of {ref}", capture=True)
            if mount is not None:
                clamped = clamp_mtimes(tree, epoch)
                os.chmod(tree, 0o755)
                cache.record_origin(tree, layers, epoch, clamped)
                log.note(f"copied from the engine's mount in {time.monotonic() - started:.1f}s")
            else:
                _flatten_saved(engine, ref, tree, epoch, workdir, started)

    return cache.tree(key, make)


def _step_before_top_layer(engine: Engine, info: ImageInfo) -> str | None:
    """The image the build left for the step just before the image's top layer, found through the
    parents podman (--layers) and docker's builder record; None when there is none (a pulled image)."""
    below = info.layer_dirs[:-1]
    parent = info.parent
    for _ in range(256):    # a Containerfile has fewer steps
        if not below or not parent:
            return None
        found = engine.find(parent)
        if found is None or len(found.layer_dirs) < len(below):
            return None
        if found.layer_dirs == below:
            return found.id
        parent = found.parent
    return None


def _derive(cache: TreeCache, tree: Path, layers: tuple[str, ...], epoch: int, ref: str) -> bool:
    """tree made from the cached tree of an image whose layers this one starts with (hard links: the cached
    tree is never changed), plus this image's further layers replayed from the engine's layer directories.
    False, with tree left empty, when there is no such tree or a layer cannot be replayed."""
    base = cache.nearest_base(layers, epoch)
    if base is None:
        return False
    base_tree, origin = base
    started = time.monotonic()
    further = layers[len(origin["layers"]):]
    copy_tree(base_tree, tree, link_files=True)
    applier = LayerApplier(str(tree), clamp_mtime=epoch)
    try:
        for layer_dir in further:
            applier.apply_overlay_dir(layer_dir, f"{ref}: layer {Path(layer_dir).parent.name[:12]}")
        stats = applier.finish()
    except (UnsupportedLayerDir, UserError, OSError) as exc:
        log.note(f"cannot replay the layers of {ref} on a cached tree ({exc}); copying the whole image")
        remove_tree(tree)
        private_dir(tree)
        return False
    os.utime(tree, (epoch, epoch))
    cache.record_origin(tree, layers, epoch, origin["clamped"] + stats.clamped)
    log.note(f"started from the cached tree {base_tree.parent.name[:19]}…, applied {len(further)} more "
             f"layer(s): {stats.entries} entries, {stats.bytes / 2**20:.1f} MiB in {time.monotonic() - started:.1f}s")
    return True


def _flatten_saved(engine: Engine, ref: str, tree: Path, epoch: int, workdir: Path, started: float) -> None:
    fmt = "docker-archive" if engine.name == "docker" else "oci-archive"
    scratch = private_dir(workdir / "scratch")
    archive = scratch / f"save-{os.getpid()}.{fmt}.tar"
    try:
        engine.save(ref, archive, fmt)
        applier = LayerApplier(str(tree), clamp_mtime=epoch)
        apply_archive(read_archive(f"{fmt}:{archive}"), applier)
        _report(applier, time.monotonic() - started)
    finally:
        archive.unlink(missing_ok=True)


def clamp_mtimes(tree: Path, epoch: int) -> int:
    """Anything newer than SOURCE_DATE_EPOCH is set to it, so equal content gives equal artifacts.
    Returns how many entries were clamped (the tree's root aside)."""
    clamped, epoch_ns = 0, epoch * 1_000_000_000
    for _rel, dirnames, filenames, dir_fd in ImageTree(tree).walk():
        for name in [*dirnames, *filenames]:
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime_ns > epoch_ns:
                os.utime(name, (epoch, epoch), dir_fd=dir_fd, follow_symlinks=False)
                clamped += 1
    os.utime(tree, (epoch, epoch))
    return clamped


def flatten_archive(spec: str, epoch: int | None, cache: TreeCache) -> tuple[Path, ArchiveImage, int]:
    image = read_archive(spec)
    epoch = epoch if epoch is not None else created_epoch(image.config)
    key = cache.key("archive", image.config_digest, epoch)

    def make(tree: Path) -> None:
        with log.step(f"Flattening {spec}"):
            started = time.monotonic()
            applier = LayerApplier(str(tree), clamp_mtime=epoch)
            apply_archive(image, applier)
            _report(applier, time.monotonic() - started)

    return cache.tree(key, make), image, epoch


def created_epoch(config: dict[str, Any]) -> int:
    """An image config's creation time (the default SOURCE_DATE_EPOCH of its exports); 0 when unknown."""
    from .engine.base import parse_created

    created = config.get("created")
    return parse_created(created) if created else 0


def _report(applier: LayerApplier, seconds: float) -> None:
    stats = applier.finish()
    log.note(f"{stats.entries} entries, {log.human_size(stats.bytes)} in {seconds:.1f}s")
    if stats.skipped_devices:
        log.note(f"{stats.skipped_devices} device nodes skipped: making them needs host root (bootable "
                 "artifacts never carry them; a tar or dir export lacks them)")
    if stats.skipped_xattrs:
        log.warn(f"{stats.skipped_xattrs} extended attributes could not be set (needs root or a "
                 "filesystem with xattr support)")


def copy_tree(source: Path, dest: Path, *, link_files: bool = False) -> None:
    """A private copy of a cached tree for an exporter to customise (reflinks where possible).

    link_files=True hard-links the files instead (directories are still copied): ten times faster, for
    exporters that only read the files and replace (never edit in place) the few they change, as
    ImageTree's writes do. cp -a never follows the tree's symlinks.
    """
    remove_tree(dest)
    dest.mkdir(parents=True)
    mode = "--link" if link_files else "--reflink=auto"
    run(["cp", "-a", mode, f"{source}/.", f"{dest}/"], step="copy the root tree", capture=True)
