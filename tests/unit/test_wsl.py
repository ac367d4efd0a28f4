"""WSL exporter: config files, names, dpkg purge and the tree rules, on small fake trees (no root needed)."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from openos365 import dpkg
from openos365.config import ExportOptions
from openos365.errors import UserError
from openos365.exporters import EXPORTERS, wsl

STATUS = """Package: bash
Status: install ok installed
Version: 5.2.15-2+b2

Package: linux-image-6.1.0-50-amd64
Status: install ok installed
Version: 6.1.176-1

Package: grub-pc-bin
Status: install ok installed
Version: 2.06-13+deb12u2

Package: grub-theme-old
Status: deinstall ok config-files
Version: 1

Package: linux-base
Status: install ok installed
Version: 4.9
"""


def options(**kw: object) -> ExportOptions:
    return ExportOptions(compression="zstd").merged(kw)


def ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


# --- pure functions ---------------------------------------------------------------------------------------

def test_registered_under_wsl() -> None:
    assert isinstance(EXPORTERS["wsl"], wsl.WslExporter)


@pytest.mark.parametrize(("compression", "fmt", "expected"), [
    ("zstd", "tar.gz", "server.wsl.tar.gz"), ("gzip", "wsl", "server.wsl"),
    ("xz", "tar.gz", "server.wsl.tar.xz"), ("xz", "wsl", "server.wsl"), ("none", "tar.gz", "server.wsl.tar.gz"),
])
def test_output_names(compression: str, fmt: str, expected: str) -> None:
    program, extension = wsl.compressor(compression)
    assert wsl.output_name("server", fmt, extension) == expected
    assert program.split()[0] in ("gzip", "xz")
    if program.startswith("gzip"):
        assert "-n" in program.split()   # no name or time stamp in the gzip header: reproducible


def test_required_tools_follow_the_compression() -> None:
    assert "gzip" in EXPORTERS["wsl"].required_tools(options())
    assert "xz" in EXPORTERS["wsl"].required_tools(options(compression="xz"))


def test_wsl_conf_enables_systemd_and_the_default_user() -> None:
    conf = ini(wsl.wsl_conf(True, "alice"))
    assert conf["boot"]["systemd"] == "true"
    assert conf["user"]["default"] == "alice"
    assert "user" not in ini(wsl.wsl_conf(True, None))
    assert ini(wsl.wsl_conf(False, None))["boot"]["systemd"] == "false"


def test_distribution_conf_has_only_keys_the_validator_accepts() -> None:
    conf = ini(wsl.distribution_conf("server"))
    assert dict(conf["oobe"]) == {"command": "/usr/lib/wsl/oobe.sh", "defaultUid": "1000", "defaultName": "server"}
    assert dict(conf["shortcut"]) == {"enabled": "true", "icon": "/usr/lib/wsl/openos365.ico"}
    assert dict(conf["windowsterminal"]) == {"ProfileTemplate": "/usr/lib/wsl/terminal-profile.json"}
    assert conf.sections() == ["oobe", "shortcut", "windowsterminal"]
    # every key is one validate-modern.py accepts (its list: oobe.*, shortcut.icon/enabled, windowsterminal.*)
    accepted = {"oobe.command", "oobe.defaultuid", "oobe.defaultname", "shortcut.icon", "shortcut.enabled",
                "windowsterminal.profiletemplate", "windowsterminal.enabled"}
    assert {f"{section}.{key.lower()}" for section in conf.sections() for key in conf[section]} <= accepted


def test_oobe_script_is_valid_shell_with_values_filled_in(tmp_path: Path) -> None:
    script = wsl.oobe_script("alice", 1001)
    assert "@" not in script.replace("aka.ms", "")   # no placeholder left
    assert "uid='1001'" in script and "preset='alice'" in script
    assert "useradd" in script and "sudo" in script
    path = tmp_path / "oobe.sh"
    path.write_text(wsl.oobe_script(None))
    assert subprocess.run(["sh", "-n", str(path)], check=False).returncode == 0


def test_fstab_keeps_comments_and_drops_entries() -> None:
    text = "# UNCONFIGURED FSTAB\nUUID=abc / ext4 defaults 0 1\n\n  # note\n/dev/sda2 none swap sw 0 0\n"
    result = wsl.strip_fstab(text)
    assert "UUID" not in result and "swap" not in result
    assert result.startswith("# UNCONFIGURED FSTAB\n") and "  # note" in result
    assert all(not line.strip() or line.lstrip().startswith("#") for line in result.splitlines())


def test_purge_selects_installed_kernel_and_boot_packages_only() -> None:
    assert wsl.packages_to_purge(STATUS) == ["grub-pc-bin", "linux-image-6.1.0-50-amd64"]
    kept = dpkg.status_without(STATUS, ["grub-pc-bin", "linux-image-6.1.0-50-amd64"])
    assert "Package: bash" in kept and "Package: linux-base" in kept and "grub-pc-bin" not in kept
    assert kept.endswith("\n\n") and "\n\n\n" not in kept


def test_elf_magic() -> None:
    assert wsl.is_elf64(b"\x7fELF\x02\x01\x01\x00")
    assert not wsl.is_elf64(b"\x7fELF\x01\x01\x01\x00")   # 32-bit
    assert not wsl.is_elf64(b"#!/bin/sh")


# --- the tree rules, on a fake Debian-like tree ----------------------------------------------------------

def fake_tree(root: Path) -> Path:
    """A small tree with what a server image has: kernel, boot loader files, boot-check unit, keys, ..."""
    tree = root / "tree"
    for rel in ("usr/bin", "usr/sbin", "usr/lib/modules/6.1.0-50-amd64/kernel", "usr/lib/grub/i386-pc", "boot",
                "etc/ssh", "etc/systemd/system/multi-user.target.wants", "etc/repart.d", "var/lib/dpkg/info",
                "var/lib/dbus", "usr/libexec/openos365", "dev", "home"):
        (tree / rel).mkdir(parents=True, exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                         ("vmlinuz", "boot/vmlinuz-6.1.0-50-amd64"), ("var/run", "/run")):
        (tree / link).symlink_to(target)
    elf = shutil.which("true") or "/bin/true"
    for rel in ("usr/bin/dash", "usr/bin/bash", "usr/lib/systemd-init"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(elf, tree / rel)
    (tree / "usr/bin/sh").symlink_to("dash")
    (tree / "usr/sbin/init").symlink_to("/usr/lib/systemd-init")
    files = {
        "boot/vmlinuz-6.1.0-50-amd64": "kernel", "boot/initrd.img-6.1.0-50-amd64": "initrd",
        "usr/lib/modules/6.1.0-50-amd64/kernel/x.ko": "ko", "usr/lib/grub/i386-pc/normal.mod": "mod",
        "etc/ssh/ssh_host_ed25519_key": "secret", "etc/ssh/ssh_host_ed25519_key.pub": "pub",
        "etc/ssh/sshd_config": "Port 22\n", "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/hostname": "builder\n", "etc/resolv.conf": "nameserver 10.0.0.1\n",
        "etc/fstab": "# static\nUUID=1 / ext4 defaults 0 1\n", "etc/repart.d/50-root.conf": "[Partition]\n",
        "etc/systemd/system/openos365-boot-check.service": "[Unit]\n",
        "usr/libexec/openos365/boot-check": "#!/bin/sh\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n", "etc/group": "root:x:0:\nsudo:x:27:\nshadow:x:42:\n",
        "etc/shadow": "root:*:19000:0:99999:7:::\n",
        "var/lib/dpkg/status": STATUS,
        "var/lib/dpkg/info/grub-pc-bin.list": "/.\n/usr\n/usr/lib\n/usr/lib/grub\n/usr/lib/grub/i386-pc\n"
                                              "/usr/lib/grub/i386-pc/normal.mod\n",
        "var/lib/dpkg/info/grub-pc-bin.md5sums": "",
        "var/lib/dpkg/info/linux-image-6.1.0-50-amd64.list": "/.\n/boot\n/boot/vmlinuz-6.1.0-50-amd64\n/lib\n"
                                                             "/lib/modules/6.1.0-50-amd64/kernel/x.ko\n",
        "var/lib/dpkg/info/linux-base.list": "/.\n/usr\n",
    }
    for rel, text in files.items():
        (tree / rel).write_text(text)
    (tree / "etc/systemd/system/multi-user.target.wants/openos365-boot-check.service").symlink_to(
        "/etc/systemd/system/openos365-boot-check.service")
    (tree / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service").symlink_to(
        "/lib/systemd/system/systemd-networkd.service")
    return tree


@pytest.fixture()
def prepared(tmp_path: Path) -> tuple[Path, dict]:
    tree = fake_tree(tmp_path)
    details = wsl.prepare_tree(tree, "server", options(), epoch=1_700_000_000)
    return tree, details


def test_kernel_boot_and_identity_are_gone(prepared: tuple[Path, dict]) -> None:
    tree, details = prepared
    for rel in ("boot", "vmlinuz", "usr/lib/modules", "usr/lib/grub", "etc/repart.d", "etc/hostname",
                "etc/resolv.conf", "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub",
                "etc/systemd/system/openos365-boot-check.service",
                "etc/systemd/system/multi-user.target.wants/openos365-boot-check.service",
                "usr/libexec/openos365/boot-check", "var/lib/dbus/machine-id"):
        assert not os.path.lexists(tree / rel), rel
    assert (tree / "etc/ssh/sshd_config").exists()
    assert (tree / "etc/machine-id").read_text() == "" and (tree / "etc/machine-id").exists()
    assert "UUID" not in (tree / "etc/fstab").read_text()


def test_merged_usr_symlinks_survive_the_purge(prepared: tuple[Path, dict]) -> None:
    tree, details = prepared
    assert details["purged_packages"] == ["grub-pc-bin", "linux-image-6.1.0-50-amd64"]
    assert os.readlink(tree / "lib") == "usr/lib"     # listed by the kernel package, but a symlink to a dir
    assert (tree / "usr/lib").is_dir()
    assert os.readlink(tree / "var/run") == "/run"
    status = (tree / "var/lib/dpkg/status").read_text()
    assert "linux-image" not in status and "grub-pc-bin" not in status and "Package: linux-base" in status
    info = sorted(os.listdir(tree / "var/lib/dpkg/info"))
    assert info == ["linux-base.list"]


def test_wsl_files_and_masks(prepared: tuple[Path, dict]) -> None:
    tree, details = prepared
    assert stat.S_IMODE((tree / "etc/wsl.conf").stat().st_mode) == 0o644
    assert stat.S_IMODE((tree / "etc/wsl-distribution.conf").stat().st_mode) == 0o644
    assert stat.S_IMODE((tree / "usr/lib/wsl/oobe.sh").stat().st_mode) == 0o755
    assert ini((tree / "etc/wsl.conf").read_text())["boot"]["systemd"] == "true"
    # the Start menu shortcut's icon, where and as Microsoft's validator wants it (no "No shortcut.icon")
    shortcut = ini((tree / "etc/wsl-distribution.conf").read_text())["shortcut"]
    icon = tree / shortcut["icon"].lstrip("/")
    assert shortcut["icon"].startswith("/usr/lib/wsl/") and shortcut["enabled"] == "true"
    assert stat.S_IMODE(icon.stat().st_mode) == 0o644 and icon.stat().st_size <= 1 << 20
    data = icon.read_bytes()
    assert data[:4] == b"\x00\x00\x01\x00" and b"\x89PNG" in data     # an ICO with PNG images
    # Windows Terminal's profile template: under /usr/lib/wsl, 0640 root, <= 1 MiB, a profile and its scheme
    template = ini((tree / "etc/wsl-distribution.conf").read_text())["windowsterminal"]["ProfileTemplate"]
    profile = tree / template.lstrip("/")
    assert template.startswith("/usr/lib/wsl/") and stat.S_IMODE(profile.stat().st_mode) == 0o640
    fragment = json.loads(profile.read_text())
    assert profile.stat().st_size <= 1 << 20
    assert fragment["profiles"][0]["colorScheme"] in {scheme["name"] for scheme in fragment["schemes"]}
    assert details["systemd"] is True
    for unit in wsl.MASK:
        assert os.readlink(tree / "etc/systemd/system" / unit) == "/dev/null", unit
    assert not os.path.lexists(tree / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service")


def test_absolute_symlinks_in_the_image_stay_inside_it(tmp_path: Path) -> None:
    """An image whose /etc/ssh points at the host's /etc/ssh must not make the exporter touch the host."""
    tree = fake_tree(tmp_path)
    outside = tmp_path / "host-ssh"
    outside.mkdir()
    (outside / "ssh_host_rsa_key").write_text("host key")
    shutil.rmtree(tree / "etc/ssh")
    (tree / "etc/ssh").symlink_to(str(outside))      # absolute: inside the image it means <tree>/<outside>
    wsl.prepare_tree(tree, "server", options(), epoch=0)
    assert (outside / "ssh_host_rsa_key").read_text() == "host key"


def test_a_tree_without_a_shell_is_refused(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    (tree / "usr/bin/sh").unlink()
    with pytest.raises(UserError, match="/bin/sh"):
        wsl.prepare_tree(tree, "server", options(), epoch=0)


def test_without_init_systemd_is_off(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    (tree / "usr/sbin/init").unlink()
    details = wsl.prepare_tree(tree, "server", options(), epoch=0)
    assert details["systemd"] is False
    assert ini((tree / "etc/wsl.conf").read_text())["boot"]["systemd"] == "false"


def test_user_option_creates_the_default_user(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    details = wsl.prepare_tree(tree, "server", options(user="alice"), epoch=0)
    assert details["default_uid"] == 1000
    assert "alice:x:1000:1000:" in (tree / "etc/passwd").read_text()
    assert ini((tree / "etc/wsl.conf").read_text())["user"]["default"] == "alice"
    assert "preset='alice'" in (tree / "usr/lib/wsl/oobe.sh").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_nodes_are_removed(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    os.mknod(tree / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(tree / "dev/fifo")
    details = wsl.prepare_tree(tree, "server", options(), epoch=0)
    assert details["device_nodes_removed"] == 1
    assert not os.path.lexists(tree / "dev/null") and (tree / "dev/fifo").exists()
