import os

import pytest

from openos365 import boot, customize
from openos365.errors import UserError
from openos365.imagetree import ImageTree


def debian_tree(tmp_path, versions=("6.1.0-10-amd64", "6.1.0-9-amd64")):
    (tmp_path / "boot").mkdir()
    for v in versions:
        (tmp_path / f"boot/vmlinuz-{v}").write_text("k")
        (tmp_path / f"boot/initrd.img-{v}").write_text("i")
    os.symlink(f"boot/vmlinuz-{versions[0]}", tmp_path / "vmlinuz")
    os.symlink(f"boot/initrd.img-{versions[0]}", tmp_path / "initrd.img")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                         "sshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nshadow:x:42:\nsudo:x:27:\n")
    (tmp_path / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    return tmp_path


def test_newest_kernel_wins_by_version_not_by_text(tmp_path):
    kernel = boot.find_kernel(debian_tree(tmp_path))
    assert kernel.version == "6.1.0-10-amd64"
    assert str(kernel.kernel) == "boot/vmlinuz-6.1.0-10-amd64"
    assert str(kernel.kernel_link) == "vmlinuz" and str(kernel.initrd_link) == "initrd.img"


def test_fedora_layout(tmp_path):
    moddir = tmp_path / "usr/lib/modules/6.11.4-301.fc41.x86_64"
    moddir.mkdir(parents=True)
    (moddir / "vmlinuz").write_text("k")
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/initramfs-6.11.4-301.fc41.x86_64.img").write_text("i")
    kernel = boot.find_kernel(tmp_path)
    assert kernel.initrd.name == "initramfs-6.11.4-301.fc41.x86_64.img"
    assert kernel.kernel_link is None


def test_no_kernel_says_which_package(tmp_path):
    with pytest.raises(UserError, match="has no kernel") as err:
        boot.find_kernel(tmp_path)
    assert "linux-image-amd64" in err.value.hint


def test_kernel_without_initrd(tmp_path):
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-6.1").write_text("k")
    with pytest.raises(UserError, match="no initrd") as err:
        boot.find_kernel(tmp_path)
    assert "initramfs-tools" in err.value.hint


def test_live_support(tmp_path):
    assert boot.live_support(tmp_path) is None
    (tmp_path / "usr/lib/live/boot").mkdir(parents=True)
    assert boot.live_support(tmp_path) == "live-boot"


def test_clear_identity(tmp_path):
    (tmp_path / "etc/ssh").mkdir(parents=True)
    (tmp_path / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (tmp_path / "etc/ssh/ssh_host_ed25519_key.pub").write_text("pub")
    (tmp_path / "etc/ssh/sshd_config").write_text("cfg")
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef\n")
    boot.clear_identity(tmp_path, 1_700_000_000)
    assert (tmp_path / "etc/machine-id").read_text() == ""
    assert sorted(p.name for p in (tmp_path / "etc/ssh").iterdir()) == ["sshd_config"]


def test_add_user_with_key(tmp_path):
    tree = debian_tree(tmp_path)
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3Nza test@host\n")
    details = customize.add_user(tree, "alice", str(key), 1_700_000_000)
    assert details == {"user": "alice", "uid": 1000}
    assert "alice:x:1000:1000::/home/alice:/bin/bash" in (tree / "etc/passwd").read_text()
    assert (tree / "etc/shadow").read_text().splitlines()[-1].startswith("alice:!:")
    assert (tree / "home/alice/.ssh/authorized_keys").read_text().startswith("ssh-ed25519 ")
    assert oct((tree / "home/alice/.ssh/authorized_keys").stat().st_mode & 0o777) == "0o600"
    assert "NOPASSWD" in (tree / "etc/sudoers.d/90-alice").read_text()


def test_add_user_rejects_existing_and_bad_key(tmp_path):
    tree = debian_tree(tmp_path)
    with pytest.raises(UserError, match="already has this user"):
        customize.add_user(tree, "sshd", None, 0)
    bad = tmp_path / "key"
    bad.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(UserError, match="not an OpenSSH public key"):
        customize.add_user(tree, "bob", str(bad), 0)


def test_write_file_replaces_symlink_instead_of_following_it(tmp_path):
    target = tmp_path / "outside"
    target.write_text("keep")
    (tmp_path / "tree/etc").mkdir(parents=True)
    os.symlink(str(target), tmp_path / "tree/etc/hostname")
    ImageTree(tmp_path / "tree").write("etc/hostname", "box\n")
    assert target.read_text() == "keep"
    assert (tmp_path / "tree/etc/hostname").read_text() == "box\n"


def test_symlinks_in_the_image_never_reach_host_files(tmp_path):
    host = tmp_path / "host-etc-ssh"
    host.mkdir()
    (host / "ssh_host_ed25519_key").write_text("host secret")
    host_passwd = tmp_path / "host-passwd"
    host_passwd.write_text("hostuser:x:5000:5000::/home/hostuser:/bin/sh\n")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    os.symlink(str(host), tree / "etc/ssh")            # absolute: means <tree>/<host path> in the image
    os.symlink(str(host_passwd), tree / "etc/passwd")
    boot.clear_identity(tree, 1_700_000_000)
    boot.set_hostname(tree, "box", 1_700_000_000)
    assert (host / "ssh_host_ed25519_key").read_text() == "host secret"
    customize.add_user(tree, "carol", None, 1_700_000_000)
    assert host_passwd.read_text() == "hostuser:x:5000:5000::/home/hostuser:/bin/sh\n"
    assert "hostuser" not in (tree / "etc/passwd").read_text()  # the host file was not read into the image
