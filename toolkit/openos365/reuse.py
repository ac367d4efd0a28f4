"""Reuse of finished work, keyed by what it was made from.

- A layer whose build context (its directory's files, layer.yaml, build arguments, tags, the parent image
  id and the engine) did not change is not built again: the image id and its inspect data are remembered
  under <workdir>/builds/, and one cheap `image exists` check stands in for the engine's build.
- An export whose inputs (image id, SOURCE_DATE_EPOCH, format, options, the SSH key's content, the
  versions of the tools it runs and of openos365's own code) did not change is not made again: its
  artifacts are kept under <workdir>/artifacts/<key>/ as hard links and published again after their
  checksums are verified (`export --no-cache` makes them anew).

Both stores are private (0700) and written atomically; a damaged entry is ignored, never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from functools import cache
from pathlib import Path
from typing import Any

from . import log
from .artifacts import atomic_path, sha256_of
from .config import LayerConfig
from .engine import ImageInfo
from .rootfs import private_dir, remove_tree

_KEEP_ARTIFACTS = 4   # hard links: they cost space only once the published copies are gone


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _tree_digest(directory: Path) -> str:
    """Names, modes, link targets and contents of everything under a directory (a build context)."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        digest.update(f"{path.relative_to(directory)}\0{st.st_mode:o}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@cache
def code_digest() -> str:
    """openos365's own code and data: a changed exporter never serves an artifact made by the old one."""
    return _tree_digest(Path(__file__).resolve().parent)


# --- builds -----------------------------------------------------------------------------------------------

def context_key(layer: LayerConfig, parent_id: str, engine: str, build_args: dict[str, str]) -> str:
    return _digest("build", engine, parent_id, layer.image, list(layer.tags), build_args,
                   _tree_digest(layer.directory))


class BuildRecords:
    def __init__(self, workdir: Path):
        self.base = workdir / "builds"

    def _path(self, layer: LayerConfig) -> Path:
        # one per layer and tag: builds of one layer tree on several bases (--base) keep their own record
        return self.base / f"{hashlib.sha256(f'{layer.directory}:{layer.tags[0]}'.encode()).hexdigest()[:24]}.json"

    def get(self, layer: LayerConfig, key: str) -> ImageInfo | None:
        try:
            record = json.loads(self._path(layer).read_text())
            image = record["image"]
            return ImageInfo(**{**image, "names": tuple(image["names"]), "layer_dirs": (), "parent": None}) \
                if record.get("key") == key else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, layer: LayerConfig, key: str, info: ImageInfo) -> None:
        private_dir(self.base)
        with atomic_path(self._path(layer)) as temp:
            stored = dataclasses.replace(info, layer_dirs=(), parent=None)   # storage details go stale
            temp.write_text(json.dumps({"key": key, "image": dataclasses.asdict(stored)}))


# --- artifacts --------------------------------------------------------------------------------------------

def export_key(image_id: str, epoch: int, fmt: str, name: str, options: Any, versions: dict[str, str | None],
               mode: str) -> str:
    opts = {k: v for k, v in vars(options).items() if v not in (None, ())}
    if opts.get("ssh_key"):
        opts["ssh_key"] = [hashlib.sha256(Path(key).read_bytes()).hexdigest() for key in opts["ssh_key"]]
    if opts.get("copy"):
        opts["copy"] = [[_host_digest(Path(text.rpartition(":")[0])), text.rpartition(":")[2]] for text in opts["copy"]]
    return _digest("export", image_id, epoch, fmt, name, opts, versions, mode, code_digest())


def _host_digest(path: Path) -> str:
    """What --copy would put in the image from path: names, types, permission bits, link targets, contents."""
    digest = hashlib.sha256()
    entries = [path] if not path.is_dir() else sorted(path.rglob("*"))
    for entry in entries:
        info = entry.lstat()
        digest.update(f"{entry.relative_to(path) if entry != path else ''}\0{info.st_mode:o}\0".encode())
        if entry.is_symlink():
            digest.update(os.readlink(entry).encode())
        elif entry.is_file():
            with entry.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


class ArtifactCache:
    def __init__(self, workdir: Path):
        self.base = workdir / "artifacts"

    def fetch(self, key: str, outdir: Path) -> tuple[list[Path], dict[str, Any]] | None:
        """Publish the artifacts made earlier for key into outdir (atomically), or None."""
        entry = self.base / key
        try:
            record = json.loads((entry / "record.json").read_text())
        except (OSError, ValueError):
            return None
        files: dict[str, str] = record["files"]
        for name, checksum in files.items():
            if not _unchanged(entry / name, record["stat"].get(name)) and sha256_of(entry / name) != checksum:
                log.warn(f"the cached {name} was changed since it was made; making it again")
                remove_tree(entry)
                return None
        paths = [_publish(entry / name, outdir / name)    # KIS: .append, which marks a complete set, last
                 for name in sorted(files, key=lambda n: n.endswith(".append"))]
        record["stat"] = {name: _signature(entry / name) for name in files}   # links moved the ctimes
        with atomic_path(entry / "record.json") as temp:
            temp.write_text(json.dumps(record))
        os.utime(entry)
        return paths, record["details"]

    def store(self, key: str, paths: list[Path], details: dict[str, Any]) -> None:
        files = [p for p in paths if p.is_file()]
        if not files or len(files) != len(paths):
            return   # directory artifacts (--to dir) are not kept
        private_dir(self.base)
        temp = self.base / f"{key}.tmp-{os.getpid()}"
        remove_tree(temp)
        private_dir(temp)
        for path in files:
            _link_or_copy(path, temp / path.name)
        known = details.get("files", {})
        record = {"files": {p.name: known.get(p.name, {}).get("sha256") or sha256_of(p) for p in files},
                  "stat": {p.name: _signature(temp / p.name) for p in files}, "details": details}
        (temp / "record.json").write_text(json.dumps(record))
        remove_tree(self.base / key)
        temp.rename(self.base / key)
        self._prune(keep=key)

    def _prune(self, keep: str) -> None:
        entries = sorted((p for p in self.base.iterdir() if p.is_dir() and ".tmp-" not in p.name and p.name != keep),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[_KEEP_ARTIFACTS - 1:]:
            remove_tree(old)


def _signature(path: Path) -> list[int]:
    """What changes whenever a file's content can have changed (ctime moves on every write)."""
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _unchanged(path: Path, signature: list[int] | None) -> bool:
    try:
        return signature is not None and _signature(path) == signature
    except OSError:
        return False


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _publish(cached: Path, final: Path) -> Path:
    if final.exists() and os.path.samefile(cached, final):
        return final   # published by the last run already (and rename() of one inode onto itself does nothing)
    with atomic_path(final) as temp:
        _link_or_copy(cached, temp)
    return final
