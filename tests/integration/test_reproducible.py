"""Same image + same options => same bytes, whatever the state of the flattened-tree cache.

mke2fs -d copies each source file's atime into its inode. With SOURCE_DATE_EPOCH it clamps times newer
than the epoch down to the epoch, but keeps older ones. Reading a file (cp, or mke2fs itself; relatime)
moves its atime to "now". So if nothing pins the atimes, the first export after a fresh flatten records
the image's old atimes, and every later export from the same (warm) cache records the epoch. The disk
exporter hard-links the cached tree's files (and symlinks) into its private tree, so its own mkfs run
warms the cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.integration

LAYER = "layers/server"


@pytest.fixture
def space(tmp_path: Path):
    """Two work dirs (a flattened tree each) and several sparse disks: removed as soon as the test ends."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def sha256_of(outdir: Path, artifact: str) -> str:
    """The hash the tool wrote next to the artifact (`<hex>  <name>`)."""
    return (outdir / f"{artifact}.sha256").read_text().split()[0]


@pytest.mark.parametrize(("fmt", "extra", "artifact"), [
    ("raw", (), "server.raw"),
    ("kis", ("--rootfs", "ext4"), "server.ext4"),
], ids=["raw", "kis-ext4"])
def test_cold_and_warm_tree_cache_give_identical_bytes(server_image: str, space: Path, fmt: str,
                                                       extra: tuple[str, ...], artifact: str) -> None:
    cold_wd, warm_wd = space / "wd-cold", space / "wd-warm"

    # Warm workdir: flattened, then used by another export, whose mkfs.ext4 read every file of the tree.
    cli("--workdir", str(warm_wd), "export", "--to", "raw", LAYER, "-o", str(space / "warm-up"))
    shutil.rmtree(space / "warm-up")
    warm = space / "out-warm"
    cli("--workdir", str(warm_wd), "export", "--to", fmt, *extra, LAYER, "-o", str(warm), "--no-cache")

    # Cold workdir: empty, so this export flattens the image afresh and mkfs sees the tree first.
    assert not cold_wd.exists()
    cold = space / "out-cold"
    cli("--workdir", str(cold_wd), "export", "--to", fmt, *extra, LAYER, "-o", str(cold))

    assert sha256_of(cold, artifact) == sha256_of(warm, artifact), (
        f"--to {fmt} {' '.join(extra)}: a cold tree cache and a warm one give different bytes "
        "(typically inode atimes: mke2fs -d copies atimes older than SOURCE_DATE_EPOCH, and reading "
        "the tree moves them to now)")
    assert (cold / artifact).stat().st_size == (warm / artifact).stat().st_size
    assert sha256_of(cold, f"{artifact}.cdx.json") == sha256_of(warm, f"{artifact}.cdx.json")   # its SBOM too
