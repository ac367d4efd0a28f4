"""Shared helpers for the benchmark scripts: timing, the floor commands, printing ratios."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "openos365.cli"]


def timed(label: str, action: Callable[[], object]) -> float:
    start = time.monotonic()
    action()
    seconds = time.monotonic() - start
    print(f"  {label:<52} {seconds:8.1f} s", flush=True)
    return seconds


def sh(*argv: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> str:
    result = subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def openos365(*args: str, workdir: Path | None = None, env: dict[str, str] | None = None) -> str:
    extra = ["--workdir", str(workdir)] if workdir else []
    return sh(*CLI, *extra, *args, env=env)


def ratio(label: str, value: float, floor: float) -> None:
    print(f"  {label:<52} {value / floor:8.2f} x", flush=True)


def plain_flatten(ref: str, dest: Path) -> None:
    """The floor for flattening: podman export | tar -x."""
    cid = sh("podman", "create", ref, "true").strip()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(f"podman export {cid} | tar --numeric-owner --xattrs --xattrs-include='*' -xpf - -C {dest}",
                       shell=True, check=True)
    finally:
        sh("podman", "rm", "-f", cid)


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="openos365-bench-", dir=REPO / ".openos365"
                                 if (REPO / ".openos365").is_dir() else None))


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
