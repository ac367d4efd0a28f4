"""Export-time settings (customize.py): users with groups, keys and a password; time zone, locale, keymap;
extra files. Fake Debian-like trees, no root needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from openos365 import customize
from openos365.config import ExportOptions, load_layer
from openos365.errors import UserError
from openos365.imagetree import ImageTree

EPOCH = 1_700_000_000


def image(tmp_path: Path) -> ImageTree:
    root = tmp_path / "tree"
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\nadm:x:4:syslog\nshadow:x:42:\nsudo:x:27:\nusers:x:100:\n")
    (root / "etc/gshadow").write_text("root:*::\nadm:*::syslog\nshadow:*::\nsudo:*::\nusers:*::\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    zone = root / "usr/share/zoneinfo/Europe"
    zone.mkdir(parents=True)
    (zone / "Berlin").write_bytes(b"TZif2")
    (root / "usr/lib/locale/C.utf8").mkdir(parents=True)
    return ImageTree(root)


def key(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.pub"
    path.write_text(f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{name} {name}@host\n")
    return str(path)


def opts(**values: object) -> ExportOptions:
    return ExportOptions().merged(values)


def test_users_with_groups_each_get_their_own_key(tmp_path):
    tree = image(tmp_path)
    done = customize.apply(tree, opts(user=["alice:sudo,adm", "bob"], ssh_key=[key(tmp_path, "a"),
                                                                              key(tmp_path, "b")]), EPOCH)
    assert [u["user"] for u in done["users"]] == ["alice", "bob"] and done["user"] == "alice"
    group = tree.read_text("etc/group")
    assert "sudo:x:27:alice\n" in group and "adm:x:4:syslog,alice\n" in group
    assert "adm:*::syslog,alice\n" in tree.read_text("etc/gshadow")
    assert "a@host" in tree.read_text("home/alice/.ssh/authorized_keys")
    assert "b@host" in tree.read_text("home/bob/.ssh/authorized_keys")
    assert "users:x:100:\n" in group           # untouched


def test_keys_pair_with_users_by_position_and_extra_keys_are_refused(tmp_path):
    with pytest.raises(UserError, match="2 SSH keys for 1 users"):
        opts(user=["alice"], ssh_key=[key(tmp_path, "a"), key(tmp_path, "b")])
    with pytest.raises(UserError, match="no --user: only one key can go to root"):
        opts(ssh_key=[key(tmp_path, "a"), key(tmp_path, "b")])
    with pytest.raises(UserError, match="named twice"):
        opts(user=["alice", "alice:sudo"])
    with pytest.raises(UserError, match="export.user 'Alice:sudo'"):
        opts(user=["Alice:sudo"])


def test_a_group_the_image_lacks_is_named(tmp_path):
    with pytest.raises(UserError, match="the image has no group wheel"):
        customize.apply(image(tmp_path), opts(user=["alice:sudo,wheel"]), EPOCH)


def test_password_is_hashed_on_the_host_and_set_for_every_user(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("correct horse\nignored second line\n")
    secret.chmod(0o600)
    tree = image(tmp_path)
    done = customize.apply(tree, opts(user=["alice", "bob"], password_file=str(secret)), EPOCH)
    assert done["password_for"] == ["alice", "bob"]
    shadow = {line.split(":")[0]: line.split(":") for line in tree.read_text("etc/shadow").splitlines()}
    for user in ("alice", "bob"):
        hashed = shadow[user][1]
        assert hashed.startswith("$6$") and "correct horse" not in hashed
        salt = hashed.split("$")[2]
        again = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input="correct horse\n",
                               capture_output=True, text=True, check=True).stdout.strip()
        assert again == hashed               # the first line, and only it, is the password
    assert shadow["root"][1] == "*"


def test_password_without_users_is_roots(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    tree = image(tmp_path)
    assert customize.apply(tree, opts(password_file=str(secret)), EPOCH)["password_for"] == ["root"]
    assert tree.read_text("etc/shadow").startswith("root:$6$")


def test_empty_password_file_is_refused(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("\n")
    with pytest.raises(UserError, match="first line is empty"):
        customize.apply(image(tmp_path), opts(user=["alice"], password_file=str(secret)), EPOCH)


def test_time_zone_locale_and_keymap(tmp_path):
    tree = image(tmp_path)
    (tree.root / "etc/default/keyboard").write_text('XKBMODEL="pc105"\nXKBLAYOUT="us"\nXKBVARIANT=""\n')
    done = customize.apply(tree, opts(timezone="Europe/Berlin", locale="C.UTF-8", keymap="de-nodeadkeys"), EPOCH)
    assert done == {"timezone": "Europe/Berlin", "locale": "C.UTF-8", "keymap": "de-nodeadkeys"}
    assert os.readlink(tree.root / "etc/localtime") == "../usr/share/zoneinfo/Europe/Berlin"
    assert tree.read_text("etc/timezone") == "Europe/Berlin\n"
    assert tree.read_text("etc/default/locale") == "LANG=C.UTF-8\n" == tree.read_text("etc/locale.conf")
    assert tree.read_text("etc/vconsole.conf") == "KEYMAP=de-nodeadkeys\n"
    keyboard = tree.read_text("etc/default/keyboard")
    assert 'XKBLAYOUT="de"' in keyboard and 'XKBVARIANT="nodeadkeys"' in keyboard and "pc105" in keyboard
    assert "us" not in keyboard


@pytest.mark.parametrize("link", ["default/keyboard", "/etc/default/keyboard", "../../../etc/default/keyboard"])
def test_keymap_goes_where_debian_13s_vconsole_link_points_and_the_link_stays(tmp_path, link):
    """Debian 13: /etc/vconsole.conf -> default/keyboard (dangling without keyboard-configuration), restored by
    tmpfiles.d at every boot; a link climbing out of the tree still lands inside it."""
    tree = image(tmp_path)
    (tree.root / "etc/vconsole.conf").symlink_to(link)
    customize.apply(tree, opts(keymap="de"), EPOCH)
    assert os.readlink(tree.root / "etc/vconsole.conf") == link
    keyboard = tree.read_text("etc/default/keyboard")
    assert keyboard.startswith("KEYMAP=de\n") and 'XKBLAYOUT="de"' in keyboard
    assert tree.read_text("etc/vconsole.conf") == keyboard


def test_settings_the_image_cannot_honour_are_refused(tmp_path):
    tree = image(tmp_path)
    with pytest.raises(UserError, match="no /usr/share/zoneinfo/Mars/Olympus"):
        customize.apply(tree, opts(timezone="Mars/Olympus"), EPOCH)
    with pytest.raises(UserError, match="has not generated this locale") as error:
        customize.apply(tree, opts(locale="de_DE.UTF-8"), EPOCH)
    assert "locale-gen" in error.value.hint
    (tree.root / "usr/lib/locale/locale-archive").write_bytes(b"\0")
    (tree.root / "etc/locale.gen").write_text("# en_US.UTF-8 UTF-8\nde_DE.UTF-8 UTF-8\n")
    assert customize.locale_available(tree, "de_DE.UTF-8") and not customize.locale_available(tree, "en_US.UTF-8")
    for bad in ({"timezone": "../../etc/passwd"}, {"locale": "de_DE.UTF-8;rm"}, {"keymap": "De Layout"}):
        with pytest.raises(UserError, match="is not valid"):
            opts(**bad)


def test_copy_files_and_directories_in_root_owned_with_their_modes(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o750)
    (src / "sub/data").write_text("data")
    os.symlink("run.sh", src / "link")
    motd = tmp_path / "motd"
    motd.write_text("hello\n")
    tree = image(tmp_path)
    done = customize.apply(tree, opts(copy=[f"{src}:/opt/tool", f"{motd}:/etc/", f"{motd}:/etc/issue.net"]), EPOCH)
    assert done["copied"] == ["/opt/tool", "/etc/motd", "/etc/issue.net"]
    root = tree.root
    assert (root / "opt/tool/run.sh").stat().st_mode & 0o777 == 0o750
    assert (root / "opt/tool/sub/data").read_text() == "data"
    assert os.readlink(root / "opt/tool/link") == "run.sh"
    assert (root / "etc/motd").read_text() == "hello\n" == (root / "etc/issue.net").read_text()
    assert (root / "etc/motd").stat().st_mtime == EPOCH


def test_copy_never_writes_through_a_symlink_of_the_image(tmp_path):
    host = tmp_path / "host-dir"
    host.mkdir()
    tree = image(tmp_path)
    os.symlink(str(host), tree.root / "opt")      # absolute: means <tree>/<host path> inside the image
    motd = tmp_path / "motd"
    motd.write_text("hello\n")
    customize.apply(tree, opts(copy=[f"{motd}:/opt/motd"]), EPOCH)
    assert list(host.iterdir()) == []


@pytest.mark.parametrize("text", ["no-colon", "src:relative/dest", "src:/", ":/etc/x", "src:/etc/../x"])
def test_bad_copy_specs_are_named(text):
    with pytest.raises(UserError, match="export.copy"):
        opts(copy=[text])


def test_missing_host_files_are_named_before_any_work(tmp_path):
    with pytest.raises(UserError, match="--copy .*nothing-here"):
        customize.check_host_files(opts(copy=[f"{tmp_path}/nothing-here:/etc/x"]))
    with pytest.raises(UserError, match="--password-file .*no such file"):
        customize.check_host_files(opts(password_file=str(tmp_path / "pw")))


def test_layer_yaml_paths_are_relative_to_the_layer(tmp_path):
    layer = tmp_path / "layers/box"
    (layer / "files").mkdir(parents=True)
    (layer / "Containerfile").write_text("FROM scratch\n")
    (layer / "files/id.pub").write_text("ssh-ed25519 AAAA x@y\n")
    (layer / "layer.yaml").write_text("from: docker.io/library/debian:12\nexport:\n  user: [alice, 'bob:sudo']\n"
                                      "  ssh_key: files/id.pub\n  copy: ['files:/etc/box']\n"
                                      "  timezone: Europe/Berlin\n")
    export = load_layer(layer).export
    assert export.user == ("alice", "bob:sudo")
    assert export.ssh_key == (str(layer / "files/id.pub"),)
    assert export.copy == (f"{layer / 'files'}:/etc/box",)
    assert export.timezone == "Europe/Berlin"
