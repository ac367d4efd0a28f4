"""The trust boundary: a hostile image never reaches a host file, and archive content is verified.

Each test stands in a host file or directory beside the tree (a tmp path outside the root), plays one trick
an image could play, and asserts the host path kept its mode, owner and content, and that no host bytes
reached the tree or an artifact. They run as root and as a normal user alike.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from openos365 import boot, customize, dpkg
from openos365.errors import UserError
from openos365.imagetree import ImageTree, TreeError
from openos365.rootfs import TreeCache, apply_archive, flatten_archive, read_archive
from openos365.tarapply import HostileLayerError, LayerApplier

from .test_tarapply import apply, layer


def host_state(path: Path) -> tuple:
    st = os.lstat(path)
    content = path.read_bytes() if stat.S_ISREG(st.st_mode) else sorted(os.listdir(path))
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """A directory standing in for a host directory such as /etc."""
    directory = tmp_path / "host-etc"
    directory.mkdir(mode=0o755)
    (directory / "shadow").write_text("root:host-secret:::\n")
    os.chmod(directory, 0o755)
    return directory


# --- tree edits -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("same_layer", [True, False])
def test_directory_modes_never_land_on_a_replaced_parent(tmp_path, host_dir, same_layer):
    before, shadow = host_state(host_dir), host_state(host_dir / "shadow")
    first = [("a", "dir", {}), ("a/victim", "dir", {"mode": 0o7777})]
    replace = [("a", "symlink", {"target": str(host_dir)})]
    layers = [layer(*first, *replace)] if same_layer else [layer(*first), layer(*replace)]
    apply(tmp_path / "root", *layers)
    assert host_state(host_dir) == before
    assert host_state(host_dir / "shadow") == shadow
    assert not (host_dir / "victim").exists()


def test_user_home_symlink_to_a_host_directory_is_replaced_not_followed(tmp_path, host_dir):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "home").mkdir()
    (tree / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tree / "etc/group").write_text("root:x:0:\n")
    os.symlink(str(host_dir), tree / "home/alice")
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAA alice@example\n")
    before = host_state(host_dir)
    customize.add_user(tree, "alice", str(key), 1_700_000_000)
    assert host_state(host_dir) == before
    assert not (host_dir / ".ssh").exists()
    home = tree / "home/alice"
    assert home.is_dir() and not home.is_symlink()
    assert stat.S_IMODE(home.stat().st_mode) == 0o750
    assert (home / ".ssh/authorized_keys").read_text() == "ssh-ed25519 AAAA alice@example\n"


def test_user_gets_an_id_free_in_passwd_and_group(tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tree / "etc/group").write_text("root:x:0:\nusers:x:1000:\n")
    assert customize.add_user(tree, "bob", None, 0)["uid"] == 1001
    assert "bob:x:1001:" in (tree / "etc/group").read_text()


def test_grub_modules_that_are_symlinks_to_host_files_are_not_copied(tmp_path):
    secret = tmp_path / "host-boot.img"
    secret.write_bytes(b"HOST-MBR-BYTES" * 40)
    tree = tmp_path / "tree"
    grub = tree / "usr/lib/grub/i386-pc"
    grub.mkdir(parents=True)
    (grub / "normal.mod").write_bytes(b"\x7fELF normal")
    os.symlink(str(secret), grub / "boot.img")
    os.symlink(str(secret), grub / "command.lst")
    copied = boot.grub_modules(tree, "i386-pc", tmp_path / "scratch")
    assert copied.parent == tmp_path / "scratch"
    assert (copied / "normal.mod").read_bytes() == b"\x7fELF normal"
    for name in ("boot.img", "command.lst"):
        assert not (copied / name).exists() or b"HOST-MBR" not in (copied / name).read_bytes()


def test_dpkg_status_symlink_to_a_host_file_is_not_read(tmp_path):
    host_status = tmp_path / "host-status"
    host_status.write_text("Package: host-only\nStatus: install ok installed\nVersion: 1\n\n")
    tree = tmp_path / "tree"
    (tree / "var/lib/dpkg").mkdir(parents=True)
    os.symlink(str(host_status), tree / "var/lib/dpkg/status")
    assert dpkg.installed_packages(ImageTree(tree)) == []


def test_os_release_pointing_at_a_fifo_or_device_is_refused_quickly(tmp_path):
    tree = tmp_path / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "dev").mkdir()
    os.mkfifo(tree / "dev/zero")     # a reader of a fifo would block forever; root images carry device nodes
    os.symlink("/dev/zero", tree / "usr/lib/os-release")
    started = time.monotonic()
    info = boot.describe_tree(tree)
    assert time.monotonic() - started < 5
    assert "not a regular file" in info["os_problem"]
    with pytest.raises(TreeError, match="not a regular file"):
        ImageTree(tree).read_bytes("usr/lib/os-release")


def test_reads_are_capped(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 2048)
    with pytest.raises(TreeError, match="more than openos365 reads"):
        ImageTree(tmp_path).read_bytes("big", limit=1024)


def test_writes_replace_hard_linked_files_instead_of_editing_them(tmp_path):
    """The disk exporter's tree shares inodes with the cached tree: a write must never reach the cache."""
    cached = tmp_path / "cache-hostname"
    cached.write_text("cached\n")
    (tmp_path / "tree/etc").mkdir(parents=True)
    os.link(cached, tmp_path / "tree/etc/hostname")
    ImageTree(tmp_path / "tree").write("etc/hostname", "new\n")
    assert cached.read_text() == "cached\n"
    assert (tmp_path / "tree/etc/hostname").read_text() == "new\n"


def test_identity_and_secrets_are_cleared(tmp_path):
    tree = tmp_path / "tree"
    secrets = ["var/lib/systemd/credential.secret", "etc/ssl/private/ssl-cert-snakeoil.key",
               "etc/ssl/certs/ssl-cert-snakeoil.pem", "boot/loader/random-seed", "var/lib/dhcp/dhclient.eth0.leases",
               "var/lib/NetworkManager/internal-1234-eth0.lease", "etc/ssh/ssh_host_rsa_key"]
    for rel in [*secrets, "usr/sbin/make-ssl-cert"]:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("secret")
    boot.clear_identity(tree, 0)
    assert [rel for rel in secrets if (tree / rel).exists()] == []
    assert (tree / "etc/machine-id").read_text() == ""
    wants = tree / "etc/systemd/system/multi-user.target.wants/openos365-snakeoil.service"
    assert os.readlink(wants) == "/etc/systemd/system/openos365-snakeoil.service"


# --- OCI layer semantics --------------------------------------------------------------------------------

def test_opaque_marker_after_a_same_layer_subdirectory_hides_the_lower_entries_below_it(tmp_path):
    root = tmp_path / "root"
    lower = layer(("d", "dir", {}), ("d/sub", "dir", {}), ("d/sub/old-secret", "file", {"data": b"s"}),
                  ("d/old", "file", {"data": b"o"}))
    upper = layer(("d", "dir", {}), ("d/sub", "dir", {}), ("d/sub/new", "file", {"data": b"n"}),
                  ("d/.wh..wh..opq", "file", {}))
    apply(root, lower, upper)
    assert sorted(p.relative_to(root).as_posix() for p in (root / "d").rglob("*")) == ["d/sub", "d/sub/new"]


def test_whiteout_after_a_same_layer_entry_keeps_that_entry(tmp_path):
    root = tmp_path / "root"
    apply(root, layer(("etc", "dir", {}), ("etc/conf", "file", {"data": b"lower"})),
          layer(("etc", "dir", {}), ("etc/conf", "file", {"data": b"upper"}), ("etc/.wh.conf", "file", {})))
    assert (root / "etc/conf").read_bytes() == b"upper"


def test_whiteout_below_a_file_hides_nothing(tmp_path):
    root = tmp_path / "root"
    apply(root, layer(("a", "file", {"data": b"file"})), layer(("a/.wh.b", "file", {})))
    assert (root / "a").read_bytes() == b"file"


def test_whiteout_before_a_same_layer_entry_hides_only_the_lower_one(tmp_path):
    root = tmp_path / "root"
    apply(root, layer(("x", "dir", {}), ("x/lower", "file", {"data": b"l"})),
          layer((".wh.x", "file", {}), ("x", "dir", {}), ("x/upper", "file", {"data": b"u"})))
    assert sorted(os.listdir(root / "x")) == ["upper"]


def sparse_layer(tmp_path: Path, declared: int, tar_format: str) -> io.BytesIO:
    """A layer made by GNU tar --sparse: one file of `declared` bytes, holes but for 4 KiB at its end."""
    source = tmp_path / "sparse-src"
    source.mkdir()
    with open(source / "big.img", "wb") as fh:
        fh.truncate(declared - 4096)
        fh.seek(declared - 4096)
        fh.write(b"D" * 4096)
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--create", "--sparse", f"--format={tar_format}", "--file", str(archive),
                    "--directory", str(source), "big.img"], check=True)
    assert archive.stat().st_size < 64 << 10      # a 10 KiB layer ...
    return io.BytesIO(archive.read_bytes())


@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_sparse_members_stay_sparse(tmp_path, tar_format):
    declared = 64 << 30                               # ... declaring a 64 GiB file
    apply(tmp_path / "root", sparse_layer(tmp_path, declared, tar_format))
    st = os.stat(tmp_path / "root/big.img")
    assert st.st_size == declared
    assert st.st_blocks * 512 < 1 << 20
    with open(tmp_path / "root/big.img", "rb") as fh:
        fh.seek(declared - 4096)
        assert fh.read() == b"D" * 4096
    assert boot.tree_size(tmp_path / "root")[0] < 1 << 20


def test_a_layer_expanding_beyond_its_limit_is_refused(tmp_path):
    applier = LayerApplier(str(tmp_path / "root"))
    big = layer(("a", "file", {"data": b"x" * 4000}), ("b", "file", {"data": b"x" * 4000}))
    with pytest.raises(HostileLayerError, match="expands beyond its limit at 'b'") as err:
        applier.apply(big, "layer0", limit=6000)
    assert "OPENOS365_LAYER_LIMIT" in (err.value.hint or "")
    assert not (tmp_path / "root/b").exists()


# --- archives: verified content ---------------------------------------------------------------------------

def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layout(path: Path, layers: list[bytes], *, compress: bool = True, config_extra: dict | None = None) -> dict:
    """An OCI layout with these uncompressed layer tars; returns its parts for tampering."""
    blobs = path / "blobs/sha256"
    blobs.mkdir(parents=True)
    stored = [gzip.compress(tar, mtime=0) if compress else tar for tar in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                         "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in layers]},
                         **(config_extra or {})}).encode()
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": sha(config), "size": len(config)},
                           "layers": [{"digest": sha(b), "size": len(b),
                                       "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"} for b in stored]
                           }).encode()
    for blob in [*stored, config, manifest]:
        (blobs / sha(blob).partition(":")[2]).write_bytes(blob)
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"digest": sha(manifest), "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"}}]}))
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return {"stored": stored, "config": config, "manifest": manifest}


def tar_bytes(*members) -> bytes:
    return layer(*members).getvalue()


def test_a_verified_layout_flattens(tmp_path):
    make_layout(tmp_path / "img", [tar_bytes(("etc", "dir", {}), ("etc/os-release", "file", {"data": b"ID=x\n"}))])
    tree, image, _ = flatten_archive(f"oci:{tmp_path / 'img'}", 0, TreeCache(tmp_path / "wd"))
    assert (tree / "etc/os-release").read_bytes() == b"ID=x\n"
    assert image.id == hashlib.sha256(image_config_bytes(tmp_path / "img")).hexdigest()


def image_config_bytes(layout: Path) -> bytes:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    return (layout / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes()


def test_a_layer_whose_bytes_do_not_match_its_digest_is_refused(tmp_path):
    parts = make_layout(tmp_path / "img", [tar_bytes(("good", "file", {"data": b"g"}))])
    evil = gzip.compress(tar_bytes(("backdoor", "file", {"data": b"evil"})), mtime=0)
    (tmp_path / "img/blobs/sha256" / sha(parts["stored"][0])[7:]).write_bytes(evil)
    cache = TreeCache(tmp_path / "wd")
    with pytest.raises(UserError, match="does not match its digest"):
        flatten_archive(f"oci:{tmp_path / 'img'}", 0, cache)
    assert not list((tmp_path / "wd/rootfs").glob("*/tree"))   # nothing published


def test_a_layer_that_matches_the_manifest_but_not_the_diff_id_is_refused(tmp_path):
    """An archive writer that rewrote the manifest for a swapped layer still fails on the config's diff_id."""
    good = tar_bytes(("good", "file", {"data": b"g"}))
    make_layout(tmp_path / "img", [good], config_extra={"rootfs": {"type": "layers", "diff_ids": [sha(b"x")]}})
    with pytest.raises(UserError, match="uncompressed layer does not match"):
        flatten_archive(f"oci:{tmp_path / 'img'}", 0, TreeCache(tmp_path / "wd"))


@pytest.mark.parametrize("digest", ["sha256:../../../x", "sha256:" + "A" * 64, "md5:abc", "sha256:" + "0" * 63])
def test_malformed_digests_are_refused_before_any_path_is_built(tmp_path, digest):
    make_layout(tmp_path / "img", [tar_bytes(("f", "file", {"data": b"f"}))])
    index = json.loads((tmp_path / "img/index.json").read_text())
    index["manifests"][0]["digest"] = digest
    (tmp_path / "img/index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="is not a digest"):
        read_archive(f"oci:{tmp_path / 'img'}")


def test_a_missing_blob_names_the_archive_and_the_blob(tmp_path):
    parts = make_layout(tmp_path / "img", [tar_bytes(("f", "file", {"data": b"f"}))])
    missing = sha(parts["stored"][0])[7:]
    (tmp_path / "img/blobs/sha256" / missing).unlink()
    with pytest.raises(UserError, match=f"{tmp_path / 'img'}.*{missing}.*is missing"):
        flatten_archive(f"oci:{tmp_path / 'img'}", 0, TreeCache(tmp_path / "wd"))


def test_a_blob_symlinked_to_a_host_file_is_not_read(tmp_path):
    host = tmp_path / "host-file"
    host.write_text('{"schemaVersion": 2}')
    parts = make_layout(tmp_path / "img", [tar_bytes(("f", "file", {"data": b"f"}))])
    blob = tmp_path / "img/blobs/sha256" / sha(parts["manifest"])[7:]
    blob.unlink()
    os.symlink(str(host), blob)
    with pytest.raises(UserError, match="is missing"):
        read_archive(f"oci:{tmp_path / 'img'}")


def test_a_truncated_archive_is_a_clear_error(tmp_path):
    make_layout(tmp_path / "img", [tar_bytes(("f", "file", {"data": os.urandom(200_000)}))])
    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "img", arcname=".")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError) as err:
        flatten_archive(f"oci-archive:{archive}", 0, TreeCache(tmp_path / "wd"))
    assert str(archive) in err.value.message


def docker_archive(path: Path, config: bytes, config_name: str, tars: list[bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for index, data in enumerate(tars):
            add(f"{index}/layer.tar", data)
        add(config_name, config)
        add("manifest.json", json.dumps([{"Config": config_name, "RepoTags": ["x:1"],
                                          "Layers": [f"{i}/layer.tar" for i in range(len(tars))]}]).encode())


def test_an_archive_cannot_claim_another_images_id(tmp_path):
    """The config's file name is the writer's claim; the cache key is the digest openos365 computes."""
    genuine = tar_bytes(("etc", "dir", {}), ("etc/motd", "file", {"data": b"genuine"}))
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha(genuine)]}}).encode()
    real_id = sha(config)[7:]
    docker_archive(tmp_path / "real.tar", config, f"{real_id}.json", [genuine])
    backdoor = tar_bytes(("etc", "dir", {}), ("etc/motd", "file", {"data": b"backdoor"}))
    evil_config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha(backdoor)]}}).encode()
    docker_archive(tmp_path / "evil.tar", evil_config, f"{real_id}.json", [backdoor])
    cache = TreeCache(tmp_path / "wd")
    evil_tree, evil, _ = flatten_archive(f"docker-archive:{tmp_path / 'evil.tar'}", 0, cache)
    real_tree, real, _ = flatten_archive(f"docker-archive:{tmp_path / 'real.tar'}", 0, cache)
    assert evil.id != real_id and real.id == real_id
    assert (real_tree / "etc/motd").read_bytes() == b"genuine"
    assert (evil_tree / "etc/motd").read_bytes() == b"backdoor"
    assert cache.key("engine", real_id, 0) != cache.key("archive", real.config_digest, 0)


def test_docker_archive_layers_are_checked_against_the_diff_ids(tmp_path):
    genuine = tar_bytes(("f", "file", {"data": b"genuine"}))
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha(genuine)]}}).encode()
    docker_archive(tmp_path / "img.tar", config, "c.json", [tar_bytes(("f", "file", {"data": b"swapped"}))])
    image = read_archive(f"docker-archive:{tmp_path / 'img.tar'}")
    with pytest.raises(UserError, match="does not match its digest"):
        apply_archive(image, LayerApplier(str(tmp_path / "root")))


def test_cache_and_scratch_are_private(tmp_path):
    make_layout(tmp_path / "img", [tar_bytes(("f", "file", {"data": b"f"}))])
    tree, _, _ = flatten_archive(f"oci:{tmp_path / 'img'}", 0, TreeCache(tmp_path / "wd"))
    assert stat.S_IMODE(os.stat(tmp_path / "wd/rootfs").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tree.parent).st_mode) == 0o700


def test_read_only_trees_flatten_and_are_removed_twice_as_any_user(tmp_path):
    """Fedora's 0555 /usr/bin and 0000 /etc/shadow: flattened, then removed (and removed again) without
    root; a normal user cannot delete entries of a directory it may not write."""
    from openos365.rootfs import remove_tree

    hard = layer(("usr", "dir", {}), ("usr/bin", "dir", {"mode": 0o555}), ("usr/bin/true", "file", {"data": b"x"}),
                 ("etc", "dir", {"mode": 0o555}), ("etc/shadow", "file", {"data": b"s", "mode": 0o000}))
    for _ in range(2):
        root = tmp_path / "root"
        apply(root, hard)
        hard.seek(0)
        assert stat.S_IMODE(os.stat(root / "usr/bin").st_mode) == 0o555
        assert stat.S_IMODE(os.stat(root / "etc/shadow").st_mode) == 0
        remove_tree(root)
        assert not root.exists()
