"""Flattening rules on crafted layer tars: whiteouts, links, metadata, and hostile paths."""

import io
import os
import stat
import tarfile

import pytest

from openos365.imagetree import ImageTree, TreeError
from openos365.tarapply import HostileLayerError, LayerApplier

ROOT = os.geteuid() == 0


def layer(*members):
    """Build a layer tar in memory from (name, kind, extra) tuples."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.mtime = extra.get("mtime", 1_700_000_000)
            info.uid, info.gid = extra.get("uid", 0), extra.get("gid", 0)
            info.mode = extra.get("mode", 0o755 if kind == "dir" else 0o644)
            info.pax_headers = extra.get("pax", {})
            data = None
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "file":
                data = extra.get("data", b"")
                info.size = len(data)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, extra["target"]
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, extra["target"]
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def apply(root, *layers, clamp=None):
    applier = LayerApplier(str(root), clamp_mtime=clamp)
    for index, fh in enumerate(layers):
        applier.apply(fh, f"layer{index}")
    return applier.finish()


def test_files_dirs_symlinks_and_modes(tmp_path):
    apply(tmp_path, layer(("etc", "dir", {}), ("etc/passwd", "file", {"data": b"root:x:0:0\n"}),
                          ("usr/bin/su", "file", {"data": b"ELF", "mode": 0o4755}),
                          ("tmp", "dir", {"mode": 0o1777}),
                          ("bin", "symlink", {"target": "usr/bin"})))
    assert (tmp_path / "etc/passwd").read_bytes() == b"root:x:0:0\n"
    assert stat.S_IMODE(os.stat(tmp_path / "usr/bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(tmp_path / "tmp").st_mode) == 0o1777
    assert os.readlink(tmp_path / "bin") == "usr/bin"
    assert (tmp_path / "bin/su").read_bytes() == b"ELF"


def test_hard_links_share_an_inode(tmp_path):
    apply(tmp_path, layer(("a", "file", {"data": b"x"}), ("b", "hardlink", {"target": "a"})))
    assert os.stat(tmp_path / "a").st_ino == os.stat(tmp_path / "b").st_ino


def test_whiteout_removes_lower_file_and_dir(tmp_path):
    lower = layer(("etc/motd", "file", {"data": b"hi"}), ("var/cache/x/y", "file", {"data": b"1"}))
    upper = layer(("etc/.wh.motd", "file", {}), ("var/cache/.wh.x", "file", {}))
    apply(tmp_path, lower, upper)
    assert not (tmp_path / "etc/motd").exists()
    assert not (tmp_path / "var/cache/x").exists()
    assert not (tmp_path / "etc/.wh.motd").exists()


def test_opaque_dir_hides_lower_entries_but_keeps_its_own(tmp_path):
    lower = layer(("opt/app/old", "file", {"data": b"old"}), ("opt/app/sub/deep", "file", {"data": b"d"}))
    upper = layer(("opt/app", "dir", {}), ("opt/app/.wh..wh..opq", "file", {}),
                  ("opt/app/new", "file", {"data": b"new"}))
    apply(tmp_path, lower, upper)
    assert sorted(os.listdir(tmp_path / "opt/app")) == ["new"]


def test_later_layer_replaces_file_with_dir_and_back(tmp_path):
    apply(tmp_path, layer(("x", "file", {"data": b"f"})), layer(("x", "dir", {}), ("x/y", "file", {"data": b"y"})),
          layer(("x", "file", {"data": b"again"})))
    assert (tmp_path / "x").read_bytes() == b"again"


def test_absolute_symlink_dirs_resolve_inside_the_root(tmp_path):
    apply(tmp_path, layer(("run", "dir", {}), ("var/run", "symlink", {"target": "/run"}),
                          ("var/run/pid", "file", {"data": b"1"})))
    assert (tmp_path / "run/pid").read_bytes() == b"1"


def test_mtimes_are_clamped(tmp_path):
    apply(tmp_path, layer(("new", "file", {"data": b"n", "mtime": 2_000_000_000}), ("d", "dir", {"mtime": 2e9})),
          clamp=1_600_000_000)
    assert os.stat(tmp_path / "new").st_mtime == 1_600_000_000
    assert os.stat(tmp_path / "d").st_mtime == 1_600_000_000


@pytest.mark.skipif(not ROOT, reason="ownership needs root")
def test_numeric_ownership(tmp_path):
    apply(tmp_path, layer(("home/u/f", "file", {"data": b"x", "uid": 1234, "gid": 4321, "mode": 0o2750})))
    st = os.stat(tmp_path / "home/u/f")
    assert (st.st_uid, st.st_gid) == (1234, 4321)
    assert stat.S_IMODE(st.st_mode) == 0o2750  # setgid survives chown


def test_xattrs_and_capabilities(tmp_path):
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    pax = {"SCHILY.xattr.user.note": "hello",
           "SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")}
    stats = apply(tmp_path, layer(("bin/ping", "file", {"data": b"ELF", "pax": pax})))
    try:
        assert os.getxattr(tmp_path / "bin/ping", "user.note") == b"hello"
    except OSError:
        pytest.skip("this filesystem has no user xattrs")
    if ROOT:
        assert os.getxattr(tmp_path / "bin/ping", "security.capability") == cap
    else:
        assert stats.skipped_xattrs >= 1


def test_fifo(tmp_path):
    apply(tmp_path, layer(("run/initctl", "fifo", {"mode": 0o600})))
    assert stat.S_ISFIFO(os.lstat(tmp_path / "run/initctl").st_mode)


# --- hostile layers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape", "a/../../escape", "./../x"])
def test_hostile_names_are_refused(tmp_path, name):
    root = tmp_path / "root"
    with pytest.raises(HostileLayerError) as err:
        apply(root, layer((name, "file", {"data": b"pwned"})))
    assert "layer0" in err.value.message
    assert not (tmp_path / "escape").exists()


def test_write_through_escaping_symlink_is_clamped_at_the_root(tmp_path):
    """`..` above the root stays at the root, as in a chroot: the write lands inside the tree."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    apply(root, layer(("link", "symlink", {"target": "../outside"}), ("link/pwned", "file", {"data": b"x"})))
    assert list(outside.iterdir()) == []
    assert (root / "outside/pwned").read_bytes() == b"x"


def test_symlink_to_absolute_host_path_stays_inside(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    # `etc -> <host path>` must resolve inside the root, never to the host directory
    apply(root, layer(("etc", "symlink", {"target": str(outside)}), ("etc/passwd", "file", {"data": b"x"})))
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "passwd").read_bytes() == b"x"


def test_hard_link_to_outside_is_refused(tmp_path):
    root = tmp_path / "root"
    secret = tmp_path / "secret"
    secret.write_text("s")
    with pytest.raises(HostileLayerError):
        apply(root, layer(("h", "hardlink", {"target": "../secret"})))
    with pytest.raises(HostileLayerError, match="not in the tree"):
        apply(root, layer(("h", "hardlink", {"target": "missing"})))


def test_hard_link_through_symlink_is_resolved_in_root(tmp_path):
    root = tmp_path / "root"
    (tmp_path / "secret").write_text("s")
    with pytest.raises(HostileLayerError):
        apply(root, layer(("up", "symlink", {"target": ".."}), ("h", "hardlink", {"target": "up/secret"})))


def test_symlink_loops_are_refused(tmp_path):
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(TreeError, match="too many symlinks"):
        ImageTree(tmp_path).write("a/x", "x")
    with pytest.raises(HostileLayerError, match="too many symlinks"):
        apply(tmp_path / "root", layer(("a", "symlink", {"target": "b"}), ("b", "symlink", {"target": "a"}),
                                       ("a/x", "file", {"data": b"x"})))


@pytest.mark.parametrize("name", ["a/.wh..", ".wh..", "a/.wh."])
def test_whiteouts_that_name_no_entry_are_refused(tmp_path, name):
    root = tmp_path / "root"
    (tmp_path / "sibling").mkdir()
    with pytest.raises(HostileLayerError, match="names no entry"):
        apply(root, layer(("a/keep", "file", {"data": b"k"})), layer((name, "file", {})))
    assert (tmp_path / "sibling").exists()


def test_read_only_directories_get_their_mode_after_their_entries(tmp_path):
    apply(tmp_path, layer(("usr/bin", "dir", {"mode": 0o555}), ("usr/bin/true", "file", {"data": b"x"})),
          layer(("usr/bin", "dir", {"mode": 0o755})))
    assert (tmp_path / "usr/bin/true").read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(tmp_path / "usr/bin").st_mode) == 0o755  # the later layer's mode wins
