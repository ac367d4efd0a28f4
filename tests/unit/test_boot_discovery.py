"""Distribution-neutral boot discovery on fake trees: each distribution's kernel, initrd and upgrade-proof
paths, GRUB modules and signed loaders, grub2-* tools on the host, and the grub.cfg that finds the newest
kernel at boot (its syntax checked by grub-script-check where installed). Only Debian is boot-tested
(tests/boot); docs/distributions.md says which is which."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from openos365 import boot, runner, tools
from openos365.disk import grub
from openos365.disk.image import grub_cfg
from openos365.errors import UserError

CMDLINE = "root=UUID=abc ro console=tty0 console=ttyS0,115200"


def make(root: Path, files: dict[str, str] | None = None, links: dict[str, str] | None = None,
         os_id: str = "debian") -> Path:
    """A fake image tree: files (path -> content), relative symlinks (path -> target), os-release."""
    for rel, content in {"etc/os-release": f"ID={os_id}\n", **(files or {})}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    for rel, target in (links or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / rel)
    return root


def versioned(prefix_kernel: str, prefix_initrd: str, suffix: str, *versions: str) -> dict[str, str]:
    files = {}
    for v in versions:
        files[f"{prefix_kernel}{v}"] = f"kernel {v}"
        files[f"{prefix_initrd}{v}{suffix}"] = f"initrd {v}"
    return files


# --- Debian and Ubuntu ---------------------------------------------------------------------------------

DEBIAN = versioned("boot/vmlinuz-", "boot/initrd.img-", "", "6.1.0-9-amd64", "6.1.0-10-amd64")
DEBIAN_LINKS = {"vmlinuz": "boot/vmlinuz-6.1.0-10-amd64", "initrd.img": "boot/initrd.img-6.1.0-10-amd64",
                "vmlinuz.old": "boot/vmlinuz-6.1.0-9-amd64", "initrd.img.old": "boot/initrd.img-6.1.0-9-amd64"}

# What disk exports wrote before boot-time discovery existed: Debian's grub.cfg must not change by a byte.
DEBIAN_GRUB_CFG = f"""set timeout=1
set default=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
search --no-floppy --fs-uuid --set=root abc

menuentry "server" {{
  insmod gzio
  linux /vmlinuz {CMDLINE}
  initrd /initrd.img
}}
"""


def test_debian_links_keep_the_grub_cfg_byte_for_byte(tmp_path):
    kernel = boot.find_kernel(make(tmp_path, DEBIAN, DEBIAN_LINKS))
    assert (kernel.version, str(kernel.kernel_link), str(kernel.initrd_link)) == \
        ("6.1.0-10-amd64", "vmlinuz", "initrd.img")
    assert kernel.survives_upgrades
    assert grub_cfg("server", kernel, CMDLINE, "abc") == DEBIAN_GRUB_CFG


def test_debian_links_in_boot(tmp_path):
    links = {"boot/vmlinuz": "vmlinuz-6.1.0-10-amd64", "boot/initrd.img": "initrd.img-6.1.0-10-amd64"}
    kernel = boot.find_kernel(make(tmp_path, DEBIAN, links))
    assert (str(kernel.kernel_link), str(kernel.initrd_link)) == ("boot/vmlinuz", "boot/initrd.img")


def test_debian_without_links_finds_the_newest_versioned_kernel_and_discovers_at_boot(tmp_path):
    kernel = boot.find_kernel(make(tmp_path, DEBIAN))
    assert (kernel.version, str(kernel.kernel), str(kernel.initrd)) == \
        ("6.1.0-10-amd64", "boot/vmlinuz-6.1.0-10-amd64", "boot/initrd.img-6.1.0-10-amd64")
    assert not kernel.survives_upgrades
    cfg = grub_cfg("server", kernel, CMDLINE, "abc")
    assert "for openos365_file in /boot/vmlinuz-*; do" in cfg and 'linux "$openos365_kernel"' in cfg


def test_links_to_an_older_kernel_are_not_trusted(tmp_path):
    """/vmlinuz left pointing at the old kernel: boot the newest, found at boot, not the stale link."""
    links = {"vmlinuz": "boot/vmlinuz-6.1.0-9-amd64", "initrd.img": "boot/initrd.img-6.1.0-9-amd64"}
    kernel = boot.find_kernel(make(tmp_path, DEBIAN, links))
    assert kernel.version == "6.1.0-10-amd64" and not kernel.survives_upgrades


def test_ubuntu(tmp_path):
    files = versioned("boot/vmlinuz-", "boot/initrd.img-", "", "6.8.0-45-generic", "6.8.0-51-generic")
    links = {"boot/vmlinuz": "vmlinuz-6.8.0-51-generic", "boot/initrd.img": "initrd.img-6.8.0-51-generic"}
    kernel = boot.find_kernel(make(tmp_path, files, links, os_id="ubuntu"))
    assert kernel.version == "6.8.0-51-generic" and str(kernel.kernel_link) == "boot/vmlinuz"


# --- Fedora ---------------------------------------------------------------------------------------------

def test_fedora_boot_and_modules_layouts(tmp_path):
    """kernel-core ships /usr/lib/modules/VER/vmlinuz; kernel-install copies it to /boot/vmlinuz-VER and
    dracut writes /boot/initramfs-VER.img. The rescue kernel (0-rescue-<machine-id>) is never the newest."""
    old, new = "6.11.4-301.fc41.x86_64", "6.11.10-200.fc41.x86_64"
    files = {**versioned("boot/vmlinuz-", "boot/initramfs-", ".img", old),
             f"usr/lib/modules/{new}/vmlinuz": "k", f"boot/initramfs-{new}.img": "i",
             f"usr/lib/modules/{old}/vmlinuz": "k",
             "boot/vmlinuz-0-rescue-0123456789abcdef": "k", "boot/initramfs-0-rescue-0123456789abcdef.img": "i"}
    kernel = boot.find_kernel(make(tmp_path, files, os_id="fedora"))
    assert (kernel.version, str(kernel.kernel), str(kernel.initrd)) == \
        (new, f"usr/lib/modules/{new}/vmlinuz", f"boot/initramfs-{new}.img")
    assert not kernel.survives_upgrades


def test_fedora_bootc_initramfs_next_to_the_kernel(tmp_path):
    version = "6.12.5-200.fc41.x86_64"
    files = {f"usr/lib/modules/{version}/vmlinuz": "k", f"usr/lib/modules/{version}/initramfs.img": "i"}
    kernel = boot.find_kernel(make(tmp_path, files, os_id="fedora"))
    assert str(kernel.initrd) == f"usr/lib/modules/{version}/initramfs.img"


# --- openSUSE -------------------------------------------------------------------------------------------

def test_opensuse_initrd_name_and_its_boot_links(tmp_path):
    """openSUSE's kernel %post points /boot/vmlinuz and /boot/initrd at the newest kernel; its initrd is
    /boot/initrd-VER."""
    files = versioned("boot/vmlinuz-", "boot/initrd-", "", "6.4.0-150600.23.25-default",
                      "6.4.0-150600.23.30-default")
    links = {"boot/vmlinuz": "vmlinuz-6.4.0-150600.23.30-default", "boot/initrd": "initrd-6.4.0-150600.23.30-default"}
    kernel = boot.find_kernel(make(tmp_path, files, links, os_id="opensuse-leap"))
    assert (kernel.version, str(kernel.initrd)) == ("6.4.0-150600.23.30-default",
                                                    "boot/initrd-6.4.0-150600.23.30-default")
    assert (str(kernel.kernel_link), str(kernel.initrd_link)) == ("boot/vmlinuz", "boot/initrd")
    cfg = grub_cfg("server", kernel, CMDLINE, "abc")
    assert "linux /boot/vmlinuz root=" in cfg and "initrd /boot/initrd\n" in cfg and "openos365_consider" not in cfg


def test_opensuse_usrmerged_kernel_behind_a_boot_symlink(tmp_path):
    """Tumbleweed: /boot/vmlinuz-VER -> ../usr/lib/modules/VER/vmlinuz (followed inside the tree)."""
    version = "6.12.10-1-default"
    files = {f"usr/lib/modules/{version}/vmlinuz": "k", f"boot/initrd-{version}": "i"}
    links = {f"boot/vmlinuz-{version}": f"../usr/lib/modules/{version}/vmlinuz",
             "boot/vmlinuz": f"vmlinuz-{version}", "boot/initrd": f"initrd-{version}"}
    kernel = boot.find_kernel(make(tmp_path, files, links, os_id="opensuse-tumbleweed"))
    assert (kernel.version, str(kernel.kernel)) == (version, f"usr/lib/modules/{version}/vmlinuz")
    assert str(kernel.kernel_link) == "boot/vmlinuz"


# --- Arch -----------------------------------------------------------------------------------------------

def arch_files(*kernels: tuple[str, str]) -> dict[str, str]:
    """(pkgbase, version): mkinitcpio's /boot/vmlinuz-<pkgbase> and initramfs-<pkgbase>(-fallback).img."""
    files = {}
    for base, version in kernels:
        files |= {f"usr/lib/modules/{version}/vmlinuz": "k", f"usr/lib/modules/{version}/pkgbase": f"{base}\n",
                  f"boot/vmlinuz-{base}": "k", f"boot/initramfs-{base}.img": "i",
                  f"boot/initramfs-{base}-fallback.img": "i"}
    return files


def test_arch_names_files_by_package_and_they_survive_upgrades(tmp_path):
    kernel = boot.find_kernel(make(tmp_path, arch_files(("linux", "6.12.10-arch1-1"),
                                                        ("linux-lts", "6.6.70-1-lts")), os_id="arch"))
    assert (kernel.version, str(kernel.kernel), str(kernel.initrd)) == \
        ("6.12.10-arch1-1", "boot/vmlinuz-linux", "boot/initramfs-linux.img")
    assert (str(kernel.kernel_link), str(kernel.initrd_link)) == ("boot/vmlinuz-linux", "boot/initramfs-linux.img")
    cfg = grub_cfg("server", kernel, CMDLINE, "abc")
    assert "linux /boot/vmlinuz-linux root=" in cfg and "openos365_consider" not in cfg


def test_arch_without_pkgbase_files(tmp_path):
    files = {"boot/vmlinuz-linux": "k", "boot/initramfs-linux.img": "i"}
    kernel = boot.find_kernel(make(tmp_path, files, os_id="arch"))
    assert (str(kernel.kernel), str(kernel.initrd)) == ("boot/vmlinuz-linux", "boot/initramfs-linux.img")


def test_no_kernel_hint_names_every_distribution(tmp_path):
    with pytest.raises(UserError) as err:
        boot.find_kernel(make(tmp_path, os_id="arch"))
    assert all(p in err.value.hint for p in ("linux-image-amd64", "kernel (Fedora)", "kernel-default", "linux (Arch)"))


# --- GRUB's modules and signed loaders ------------------------------------------------------------------

@pytest.mark.parametrize(("directory", "os_id"), [("usr/lib/grub", "debian"), ("usr/lib/grub", "fedora"),
                                                   ("usr/share/grub2", "opensuse-leap"), ("usr/lib/grub", "arch")])
def test_the_images_own_unsigned_grub_modules(tmp_path, directory, os_id):
    modules = {f"{directory}/x86_64-efi/normal.mod": "n", f"{directory}/x86_64-efi/regexp.mod": "r"}
    tree = make(tmp_path / "tree", modules, os_id=os_id)
    assert boot.image_grub_dir(tree, "x86_64-efi") == f"{directory}/x86_64-efi"
    assert boot.image_grub_dir(tree, "i386-pc") is None
    copied = boot.grub_modules(tree, "x86_64-efi", tmp_path / "scratch", host_root=tmp_path / "nohost")
    assert sorted(p.name for p in copied.iterdir()) == ["normal.mod", "regexp.mod"]
    assert boot.describe_tree(tree)["grub"] == ["x86_64-efi"]


@pytest.mark.parametrize("directory", ["usr/lib/grub", "usr/share/grub2"])   # Debian/Fedora/Arch, openSUSE hosts
def test_host_grub_modules_under_either_name(tmp_path, directory):
    host = tmp_path / "host"
    (host / directory / "i386-pc").mkdir(parents=True)
    (host / directory / "i386-pc/normal.mod").write_text("n")
    tree = make(tmp_path / "tree")
    assert boot.grub_modules(tree, "i386-pc", tmp_path / "scratch", host_root=host) == host / directory / "i386-pc"


def test_no_grub_modules_anywhere_names_each_distributions_package(tmp_path):
    with pytest.raises(UserError) as err:
        boot.grub_modules(make(tmp_path / "tree"), "x86_64-efi", tmp_path / "scratch", host_root=tmp_path / "none")
    assert all(p in err.value.hint for p in ("grub-efi-amd64-bin", "grub2-efi-x64-modules", "grub2-x86_64-efi",
                                             "grub (Arch)"))


def test_opensuse_signed_grub_is_a_symlink_into_its_grub2_directory(tmp_path):
    """grub2-x86_64-efi: /usr/share/efi/x86_64/grub.efi -> ../../grub2/x86_64-efi/grub.efi (ln -sr)."""
    tree = make(tmp_path, {"usr/share/efi/x86_64/shim.efi": "shim", "usr/share/grub2/x86_64-efi/grub.efi": "grub",
                           "usr/share/efi/x86_64/MokManager.efi": "mm"},
                {"usr/share/efi/x86_64/grub.efi": "../../grub2/x86_64-efi/grub.efi"}, os_id="opensuse-tumbleweed")
    signed = boot.find_signed_boot(tree)
    assert signed is not None and (signed.distribution, signed.vendor) == ("openSUSE", "opensuse")


def test_arch_has_no_signed_chain_and_says_so(tmp_path):
    tree = make(tmp_path, {"usr/lib/grub/x86_64-efi/normal.mod": "n"}, os_id="arch")
    assert boot.find_signed_boot(tree) is None
    assert boot.secure_boot_chain(tree, "auto", "uefi") is None       # grub-mkimage's own image
    with pytest.raises(UserError) as err:
        boot.secure_boot_chain(tree, "on", "uefi")
    assert "no signed shim" in err.value.hint and "--secure-boot off" in err.value.hint


# --- grub2-* tools on Fedora and openSUSE hosts ---------------------------------------------------------

def test_grub2_mkimage_is_found_and_run_on_a_host_with_only_grub2_names(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "grub2-mkimage"
    fake.write_text('#!/bin/sh\nwhile [ "$1" != -o ]; do shift; done\necho grub2 > "$2"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(runner, "Path", lambda p: tmp_path / "no-sbin" / Path(p).name)   # no /usr/sbin, /sbin
    assert runner.which("grub-mkimage") == str(fake)
    assert tools.missing(["grub-mkimage"]) == []
    out = grub.mkimage(fmt="i386-pc", module_dir=tmp_path, early_cfg=tmp_path / "early.cfg",
                       output=tmp_path / "core.img", modules=["biosdisk"])
    assert out.read_text() == "grub2\n"


def test_doctor_hints_name_packages_that_provide_grub2_mkimage():
    tool = tools.TOOLS["grub-mkimage"]
    assert (tool.debian, tool.fedora, tool.opensuse) == ("grub-common", "grub2-tools", "grub2")


# --- the grub.cfg that finds the newest kernel at boot --------------------------------------------------

def discovery_cfg() -> str:
    exported = grub.MenuEntry("server (kernel 6.11.4-301.fc41.x86_64, as exported)",
                              "/boot/vmlinuz-6.11.4-301.fc41.x86_64", "/boot/initramfs-6.11.4-301.fc41.x86_64.img",
                              CMDLINE)
    return grub.discovery_config("server", exported, search=grub.search_by_uuid("abc"), timeout=1)


def test_discovery_config_has_the_search_every_layout_and_the_exported_kernel_as_fallback():
    cfg = discovery_cfg()
    assert "insmod regexp" in cfg                          # for-loop wildcards need regexp.mod
    assert "set openos365_kernel='/boot/vmlinuz-6.11.4-301.fc41.x86_64'" in cfg
    assert "for openos365_file in /boot/vmlinuz-*; do" in cfg and "for openos365_file in /usr/lib/modules/*; do" in cfg
    for initrd in ('"/boot/initrd.img-$2"', '"/boot/initramfs-$2.img"', '"/boot/initrd-$2"',
                   '"$openos365_file/initramfs.img"'):
        assert initrd in cfg
    assert '"$2" -pgt "$openos365_version"' in cfg and "regexp rescue" in cfg
    assert "export openos365_kernel" in cfg and "set fallback=1" in cfg
    entries = re.findall(r'menuentry "([^"]*)" \{\n  insmod gzio\n  linux (\S+) (.*)\n  initrd (\S+)\n\}', cfg)
    assert entries == [("server", '"$openos365_kernel"', CMDLINE, '"$openos365_initrd"'),
                       ("server (kernel 6.11.4-301.fc41.x86_64, as exported)", "/boot/vmlinuz-6.11.4-301.fc41.x86_64",
                        CMDLINE, "/boot/initramfs-6.11.4-301.fc41.x86_64.img")]


@pytest.mark.skipif(shutil.which("grub-script-check") is None, reason="grub-script-check (grub-common) not installed")
@pytest.mark.parametrize("which", ["discovery", "debian"])
def test_grub_script_check_accepts_the_configs(tmp_path, which):
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(discovery_cfg() if which == "discovery" else DEBIAN_GRUB_CFG)
    result = subprocess.run(["grub-script-check", str(cfg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_quote_in_an_exported_path_stays_one_grub_word():
    assert grub.grub_word("/boot/vmlinuz-it's") == "'/boot/vmlinuz-it'\\''s'"


def grub_pgt(a: str, b: str) -> bool:
    """GRUB's `test a -pgt b` (grub-core/commands/test.c): skip the common prefix, back up over the digits
    of a number that starts in it, then compare grub_strtoul(..., base 0) of both rests."""
    i = 0
    while i < len(a) and i < len(b) and a[i] == b[i]:
        i += 1
    i -= 1
    while i > 0 and a[i].isdigit():
        i -= 1
    i += 1

    def strtoul(text: str) -> int:
        found = re.match(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*", text)
        if found is None:
            return 0
        number = found.group()
        return int(number, 16) if number[:2].lower() == "0x" else int(number, 8 if number.startswith("0") else 10)

    return strtoul(a[i:]) > strtoul(b[i:])


VERSIONS = {
    "Debian": ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-26-amd64", "6.12.38+deb13-amd64", "6.12.12+bpo-amd64"],
    "Ubuntu": ["6.8.0-45-generic", "6.8.0-51-generic", "6.8.0-100-generic"],
    "Fedora": ["6.11.4-301.fc41.x86_64", "6.11.10-200.fc41.x86_64", "6.12.5-200.fc41.x86_64"],
    "openSUSE": ["6.4.0-150600.23.25-default", "6.4.0-150600.23.30-default", "6.4.0-150700.1.2-default"],
    "Arch": ["6.12.9-arch1-1", "6.12.10-arch1-1", "6.12.10-arch2-1"],
}


@pytest.mark.parametrize("distribution", list(VERSIONS))
def test_grub_picks_the_kernel_find_kernel_picks_in_any_directory_order(distribution):
    """The boot-time choice (first kernel found, replaced by each -pgt newer one) equals find_kernel's
    _version_key maximum for these versions, whatever order the file system lists them in."""
    versions = VERSIONS[distribution]
    expected = max(versions, key=boot._version_key)
    for order in itertools.permutations(versions):
        chosen = order[0]
        for version in order[1:]:
            if grub_pgt(version, chosen):
                chosen = version
        assert chosen == expected, order


def test_where_grub_and_find_kernel_differ_text_flavours_of_one_version():
    """Versions that differ only in text (two flavours of one upstream version): GRUB keeps the first
    found, find_kernel sorts the text. Documented in docs/distributions.md."""
    assert not grub_pgt("6.1.0-10-cloud-amd64", "6.1.0-10-amd64") and not grub_pgt("6.1.0-10-amd64",
                                                                                    "6.1.0-10-cloud-amd64")
