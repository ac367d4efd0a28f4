"""Replaying layers kept unpacked by the overlay storage driver onto a hard-linked copy of a cached tree.

Whiteouts there are 0/0 character devices and opaque directories carry trusted.overlay.opaque: making
those needs root (CAP_MKNOD, CAP_SYS_ADMIN), so the tests that need them skip for a normal user. The cache's
choice of a base tree needs nothing.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from openos365 import rootfs, userns
from openos365.rootfs import TreeCache
from openos365.tarapply import LayerApplier, UnsupportedLayerDir

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted xattrs need root")
EPOCH = 2_000_000_000     # later than any file these tests write


def lower_tree(root: Path) -> Path:
    """A cached parent tree: files, a directory to be made opaque, a file to be whited out."""
    (root / "etc/conf.d").mkdir(parents=True)
    (root / "etc/conf.d/old").write_text("old\n")
    (root / "etc/keep").write_text("keep\n")
    (root / "etc/gone").write_text("gone\n")
    (root / "etc/replaced").write_text("lower\n")
    return root


def hard_linked_copy(source: Path, dest: Path) -> Path:
    rootfs.copy_tree(source, dest, link_files=True)
    return dest


def state(path: Path) -> tuple:
    st = os.lstat(path)
    return st.st_ino, st.st_mode, st.st_uid, st.st_mtime_ns, path.read_bytes()


@needs_root
def test_whiteouts_opaque_directories_and_new_files_apply_without_touching_the_cached_tree(tmp_path):
    cached = lower_tree(tmp_path / "cached")
    before = {p: state(cached / p) for p in ("etc/keep", "etc/gone", "etc/replaced", "etc/conf.d/old")}
    layer = tmp_path / "diff"
    (layer / "etc/conf.d").mkdir(parents=True)
    os.setxattr(layer / "etc/conf.d", "trusted.overlay.opaque", b"y")
    (layer / "etc/conf.d/new").write_text("new\n")
    os.mknod(layer / "etc/gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    (layer / "etc/replaced").write_text("upper\n")
    os.chmod(layer / "etc/replaced", 0o4755)
    os.utime(layer / "etc/replaced", ns=(0, EPOCH * 10**9 - 123))          # kept to the nanosecond
    (layer / "etc/later").write_text("from the future\n")
    os.utime(layer / "etc/later", (EPOCH + 999, EPOCH + 999))                # clamped to the epoch
    os.link(layer / "etc/later", layer / "etc/later-link")
    os.setxattr(layer / "etc/later", "user.note", b"\xffbytes")
    os.symlink("/etc/shadow", layer / "etc/host-link")                      # created, never followed

    tree = hard_linked_copy(cached, tmp_path / "tree")
    applier = LayerApplier(str(tree), clamp_mtime=EPOCH)
    applier.apply_overlay_dir(str(layer), "test layer")
    stats = applier.finish()

    assert not (tree / "etc/gone").exists()
    assert sorted(os.listdir(tree / "etc/conf.d")) == ["new"]
    assert (tree / "etc/replaced").read_text() == "upper\n"
    assert stat.S_IMODE(os.stat(tree / "etc/replaced").st_mode) == 0o4755
    assert os.stat(tree / "etc/replaced").st_mtime_ns == EPOCH * 10**9 - 123
    assert os.stat(tree / "etc/later").st_mtime_ns == EPOCH * 10**9 and stats.clamped == 1
    assert os.stat(tree / "etc/later").st_ino == os.stat(tree / "etc/later-link").st_ino
    assert os.getxattr(tree / "etc/later", "user.note") == b"\xffbytes"
    assert os.readlink(tree / "etc/host-link") == "/etc/shadow"
    assert (tree / "etc/keep").read_text() == "keep\n"
    # the cached tree shares inodes with the new one, and none of them changed
    assert {p: state(cached / p) for p in before} == before
    assert os.stat(tree / "etc/keep").st_ino == before["etc/keep"][0]


def test_holes_stay_holes(tmp_path):
    cached = lower_tree(tmp_path / "cached")
    layer = tmp_path / "diff"
    layer.mkdir()
    with open(layer / "sparse", "wb") as fh:
        fh.seek(64 << 20)
        fh.write(b"end")
    tree = hard_linked_copy(cached, tmp_path / "tree")
    applier = LayerApplier(str(tree))
    applier.apply_overlay_dir(str(layer), "test layer")
    applier.finish()
    st = os.stat(tree / "sparse")
    assert st.st_size == (64 << 20) + 3
    assert st.st_blocks * 512 < 1 << 20
    with open(tree / "sparse", "rb") as fh:
        fh.seek(64 << 20)
        assert fh.read() == b"end"


@needs_root
@pytest.mark.parametrize("xattr", ["trusted.overlay.redirect", "trusted.overlay.metacopy"])
def test_layers_only_the_kernel_could_resolve_are_refused(tmp_path, xattr):
    layer = tmp_path / "diff"
    (layer / "moved").mkdir(parents=True)
    os.setxattr(layer / "moved", xattr, b"/elsewhere")
    with pytest.raises(UnsupportedLayerDir):
        LayerApplier(str(tmp_path / "tree")).apply_overlay_dir(str(layer), "test layer")


def cached_entry(cache: TreeCache, name: str, layers: list[str], epoch: int, clamped: int) -> None:
    entry = cache.base / f"engine-{name}-{epoch}-{userns.mode()}"
    (entry / "tree").mkdir(parents=True)
    (entry / "complete").write_text("x\n")
    (entry / "origin.json").write_text(json.dumps({"layers": layers, "epoch": epoch, "clamped": clamped}))


def test_the_longest_cached_prefix_is_the_base(tmp_path):
    cache = TreeCache(tmp_path)
    cached_entry(cache, "one", ["/l/1"], EPOCH, 0)
    cached_entry(cache, "two", ["/l/1", "/l/2"], EPOCH, 0)
    cached_entry(cache, "sibling", ["/l/1", "/l/2", "/l/other"], EPOCH, 0)
    found = cache.nearest_base(("/l/1", "/l/2", "/l/3"), EPOCH)
    assert found is not None and found[0].parent.name.startswith("engine-two-")
    assert cache.nearest_base(("/l/9",), EPOCH) is None


def test_a_base_is_used_only_when_its_times_read_the_same_under_our_epoch(tmp_path):
    cache = TreeCache(tmp_path)
    cached_entry(cache, "clamped", ["/l/1"], EPOCH, 5)
    assert cache.nearest_base(("/l/1", "/l/2"), EPOCH + 10) is None       # its times were cut at another epoch
    assert cache.nearest_base(("/l/1", "/l/2"), EPOCH) is not None         # the same epoch cuts the same
    cached_entry(cache, "unclamped", ["/l/5"], EPOCH, 0)
    assert cache.nearest_base(("/l/5", "/l/6"), EPOCH + 10) is not None    # nothing cut, a later epoch cuts none
    assert cache.nearest_base(("/l/5", "/l/6"), EPOCH - 10) is None        # an earlier one might
