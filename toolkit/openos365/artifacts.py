"""Atomic artifact writing, checksums and the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import log


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary name beside `final`; renamed to `final` only when the block succeeds.

    An interrupted export leaves no file under the final name; the temp file is removed (or, after a
    kill, is a dot-file the next run of the same export removes).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.with_name(f".{final.name}.partial")
    _remove(temp)
    try:
        yield temp
    except BaseException:
        _remove(temp)
        raise
    if final.is_dir() and not final.is_symlink():  # a directory artifact (--to dir) from an earlier run
        old = final.with_name(f".{final.name}.old")
        _remove(old)
        os.replace(final, old)
        os.replace(temp, final)
        _remove(old)
        return
    os.replace(temp, final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksum(path: Path) -> Path:
    target = path.with_name(path.name + ".sha256")
    with atomic_path(target) as temp:
        temp.write_text(f"{sha256_of(path)}  {path.name}\n")
    return target


def write_manifest(outdir: Path, name: str, data: dict[str, Any]) -> Path:
    """manifest.json: one entry per export name, so several exports can share an output directory."""
    path = outdir / "manifest.json"
    current: dict[str, Any] = {}
    if path.exists():
        try:
            current = json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warn(f"{path} was not valid JSON; rewriting it")
    current.setdefault("artifacts", {})[name] = data
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return path


def describe(paths: list[Path]) -> str:
    return ", ".join(f"{p} ({'directory' if p.is_dir() else log.human_size(p.stat().st_size)})"
                     for p in paths if p.exists())
