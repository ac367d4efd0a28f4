"""Atomic artifact writing, checksums and the manifest."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import log
from .rootfs import remove_tree


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary name beside `final` (unique to this process); renamed to `final` only when the block
    succeeds.

    An interrupted export leaves no file under the final name. The old artifact's checksum goes before the
    new artifact takes its name, and so does its SBOM (written after it), so a kill never leaves a stale .sha256
    or SBOM beside a new artifact. A temp file
    left by a killed process is removed by the next run (its process is gone).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(final.parent, f".{final.name}.partial-")
    temp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    _remove(temp)
    try:
        yield temp
    except BaseException:
        _remove(temp)
        raise
    checksum_path(final).unlink(missing_ok=True)
    sbom_path(final).unlink(missing_ok=True)
    if final.is_dir() and not final.is_symlink():  # a directory artifact (--to dir) from an earlier run
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        _remove(old)
        os.replace(final, old)
        os.replace(temp, final)
        _remove(old)
        return
    os.replace(temp, final)


def remove_abandoned(directory: Path, prefix: str) -> None:
    """Remove `<prefix><pid>` entries of processes that no longer run (killed exports)."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        pid = entry.name.removeprefix(prefix) if entry.name.startswith(prefix) else ""
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _remove(entry)


def _remove(path: Path) -> None:
    remove_tree(path)


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sbom_path(path: Path) -> Path:
    """The artifact's CycloneDX SBOM (sbom.py), beside it."""
    return path.with_name(path.name + ".cdx.json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksum(path: Path, digest: str | None = None) -> Path:
    """PATH.sha256 (`sha256sum -c` reads it); digest, when already known, saves hashing the file again."""
    target = checksum_path(path)
    with atomic_path(target) as temp:
        temp.write_text(f"{digest or sha256_of(path)}  {path.name}\n")
    return target


@contextmanager
def _manifest_locked(outdir: Path) -> Iterator[dict[str, Any]]:
    """manifest.json read, changed by the block and written back, one process at a time."""
    path = outdir / "manifest.json"
    lock = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)   # the directory itself: no lock file
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current: dict[str, Any] = {}
        if path.exists():
            try:
                current = json.loads(path.read_text())
            except json.JSONDecodeError:
                log.warn(f"{path} was not valid JSON; rewriting it")
        yield current
        with atomic_path(path) as temp:
            temp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    finally:
        os.close(lock)


def write_manifest(outdir: Path, name: str, data: dict[str, Any]) -> Path:
    """manifest.json: one entry per export name, so several exports can share an output directory."""
    with _manifest_locked(outdir) as manifest:
        manifest.setdefault("artifacts", {})[name] = data
    return outdir / "manifest.json"


def forget_manifest_entry(outdir: Path, name: str) -> None:
    """Drop an export's entry before its artifacts are replaced: a killed export must not leave the old
    entry (with old checksums) describing new files."""
    if not (outdir / "manifest.json").exists():
        return
    with _manifest_locked(outdir) as manifest:
        manifest.get("artifacts", {}).pop(name, None)


def describe(paths: list[Path]) -> str:
    return ", ".join(f"{p} ({'directory' if p.is_dir() else log.human_size(p.stat().st_size)})"
                     for p in paths if p.exists())
