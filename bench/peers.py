"""openos365 and mkosi side by side on this machine, back to back: layers/server -> a bootable qcow2.

    python bench/peers.py [--rows cold,change,again] [--peer-work DIR]

Rows:
  cold     empty image store, empty caches -> bootable qcow2. Ours: `export --to qcow2 --base debian-bookworm`
           of layers/server (Debian 12, the peers' release) in a separate, empty podman store (bootstrap from
           Debian's archive included) and an empty workdir.
           mkosi: ../shared/peers/mkosi/build.sh, its build alone (no package cache: the recipe sets no Cache=).
  change   a one-line change in the top layer -> new qcow2. Ours: bench/change.py's loop. mkosi:
           `mkosi --force --incremental build` after changing mkosi.extra/etc/motd (its cache built first).
  again    the same image exported again with the same options (mkosi has no such step).

Ours runs with --compression none, like mkosi's uncompressed qcow2, and with zstd beside it (the smaller
artifact). A peer that cannot run here (not root, its recipe missing, its install failing) is skipped
with the reason. Needs root, network access to Debian's archive, and about 10 minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from change import developer_loop
from common import REPO, cleanup, openos365, scratch, sh

PEERS = REPO.parent / "shared" / "peers"
TARGETS = {"cold": "ours/mkosi <= 0.9", "change": "<= 7 s (aim 6 s: mkosi/10)", "again": "< 1 s"}


def ours_cold(compression: str) -> float:
    """Cold export in a separate, empty image store (the bench's own: removed afterwards)."""
    work = scratch()
    conf = work / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\nrunroot = "{work}/storage/run"\n'
                    f'graphroot = "{work}/storage/root"\n')
    env = {"CONTAINERS_STORAGE_CONF": str(conf)}
    try:
        start = time.monotonic()
        # the peers' recipes build Debian 12, so ours does too (the default base is Debian 13)
        openos365("export", "--to", "qcow2", "layers/server", "--base", "debian-bookworm", "-o", str(work / "out"),
                  "--compression", compression, workdir=work / "wd", env=env)
        return time.monotonic() - start
    finally:
        subprocess.run(["podman", "rmi", "--all", "--force"], env={**os.environ, **env}, capture_output=True)
        cleanup(work)


def ours(rows: list[str]) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for compression in ("none", "zstd"):
        print(f"openos365, --compression {compression}:", flush=True)
        column = results[compression] = {}
        if "cold" in rows:
            column["cold"] = ours_cold(compression)
            print(f"  {'cold (empty store and caches)':<52} {column['cold']:8.1f} s", flush=True)
        if "change" in rows or "again" in rows:
            _first, column["change"], column["again"] = developer_loop(compression)
    return results


class Mkosi:
    """mkosi 14 from ../shared/peers/mkosi (its build.sh installs it and the shims this machine needs)."""

    def __init__(self, work: Path):
        self.recipe = PEERS / "mkosi"
        self.work = work

    def unavailable(self) -> str | None:
        if os.geteuid() != 0:
            return "needs root"
        if not (self.recipe / "build.sh").is_file():
            return f"no recipe at {self.recipe}"
        return None

    def cold(self) -> float:
        """build.sh from an empty work dir; it prints the build's own time (after installing mkosi)."""
        cleanup(self.work)
        result = subprocess.run(["bash", str(self.recipe / "build.sh")], env={**os.environ, "WORK": str(self.work)},
                                capture_output=True, text=True)
        match = re.search(r"^mkosi build: ([0-9.]+) s", result.stdout, re.MULTILINE)
        if result.returncode != 0 or not match:
            raise RuntimeError(f"mkosi build.sh failed:\n{(result.stdout + result.stderr)[-2000:]}")
        return float(match.group(1))

    def change(self) -> float:
        """--incremental build once (fills its cache), change one line of mkosi.extra, time the rebuild."""
        project = self.work / "incremental"
        cleanup(project)
        (project / "mkosi.extra/etc").mkdir(parents=True)
        shutil.copy(self.recipe / "mkosi.default", project / "mkosi.default")
        env = {**os.environ, "PATH": f"{self.work / 'shims'}:{os.environ['PATH']}"}

        def build() -> float:
            start = time.monotonic()
            result = subprocess.run(["mkosi", "--force", "--incremental", "build"], cwd=project, env=env,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"mkosi --incremental failed:\n{(result.stdout + result.stderr)[-2000:]}")
            return time.monotonic() - start

        (project / "mkosi.extra/etc/motd").write_text("first\n")
        build()
        (project / "mkosi.extra/etc/motd").write_text("second\n")
        return build()


def peer(rows: list[str], work: Path) -> dict[str, float]:
    mkosi = Mkosi(work)
    reason = mkosi.unavailable()
    if reason:
        print(f"mkosi: skipped ({reason})")
        return {}
    print("mkosi 14:", flush=True)
    results: dict[str, float] = {}
    try:
        if "cold" in rows or "change" in rows:   # the cold build also installs mkosi and its shims
            results["cold"] = mkosi.cold()
            print(f"  {'cold (build.sh, build alone)':<52} {results['cold']:8.1f} s", flush=True)
        if "change" in rows:
            results["change"] = mkosi.change()
            print(f"  {'one-line change (--incremental)':<52} {results['change']:8.1f} s", flush=True)
    except RuntimeError as exc:
        print(f"mkosi: skipped the rest ({exc})")
    return results


def table(rows: list[str], theirs: dict[str, float], mine: dict[str, dict[str, float]]) -> None:
    print()
    print(f"| {'work':<7} | {'mkosi 14':>9} | {'ours, none':>10} | {'ours/mkosi':>10} | {'ours, zstd':>10} | target |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        peer_s = theirs.get(row)
        none_s, zstd_s = mine.get("none", {}).get(row), mine.get("zstd", {}).get(row)
        shown = [f"{v:.1f} s" if v is not None else "n/a" for v in (peer_s, none_s)]
        speedup = f"{none_s / peer_s:.2f}" if peer_s and none_s else "n/a"
        zstd = f"{zstd_s:.1f} s" if zstd_s is not None else "n/a"
        print(f"| {row:<7} | {shown[0]:>9} | {shown[1]:>10} | {speedup:>10} | {zstd:>10} | {TARGETS[row]} |")
    if theirs.get("change") and mine.get("none", {}).get("change"):
        print(f"\none-line change: {theirs['change'] / mine['none']['change']:.1f}x faster than mkosi --incremental")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="cold,change,again", help="which rows, comma-separated")
    parser.add_argument("--peer-work", type=Path, default=None, help="mkosi's work dir (default: a scratch dir)")
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r in TARGETS]
    peer_work = args.peer_work or scratch()
    print(f"bench/peers.py on {REPO}, {os.cpu_count()} cores; {sh('uname', '-r').strip()}")
    try:
        theirs = peer(rows, peer_work)
        mine = ours(rows)
    finally:
        if args.peer_work is None:
            cleanup(peer_work)
    table(rows, theirs, mine)


if __name__ == "__main__":
    main()
