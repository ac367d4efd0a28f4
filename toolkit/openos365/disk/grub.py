"""GRUB without grub-install: images made by grub-mkimage, written into place by us.

Used by disks (BIOS core.img in the BIOS boot partition + boot.img in the MBR; BOOTX64.EFI on the ESP)
and by live ISOs (i386-pc-eltorito + an EFI image). grub-mkimage output is deterministic; grub-mkrescue
and grub-mkstandalone are not (their memdisk stores the current time).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ..arch import Arch
from ..boot import BOOT_INITRDS
from ..runner import run

# core.img must find /boot/grub on the root filesystem; normal.mod and the rest load from there.
DISK_BIOS_MODULES = ["biosdisk", "part_gpt", "part_msdos", "ext2", "search", "search_fs_uuid"]
DISK_EFI_MODULES = ["part_gpt", "part_msdos", "fat", "ext2", "search", "search_fs_uuid", "normal", "configfile",
                    "linux", "echo", "serial", "terminal", "efi_gop", "all_video", "gzio", "test"]
# Live media: everything embedded, so GRUB needs nothing but the ISO9660 filesystem.
LIVE_MODULES = ["part_gpt", "part_msdos", "iso9660", "fat", "ext2", "search", "search_label", "search_fs_file",
                "search_fs_uuid", "normal", "configfile", "linux", "echo", "serial", "terminal", "test", "gzio",
                "all_video", "sleep", "ls", "cat"]

# GRUB platforms without some PC-only modules (arm64-efi has no serial module: its EFI console is the serial
# port that firmware set up)
ABSENT_MODULES = {"arm64-efi": {"serial"}}


def efi_modules(modules: list[str], arch: Arch) -> list[str]:
    absent = ABSENT_MODULES.get(arch.efi_platform, set())
    return [m for m in modules if m not in absent]


@dataclass(frozen=True)
class MenuEntry:
    title: str
    kernel: str        # path as GRUB sees it on the device `root` points at
    initrd: str
    cmdline: str


def config(entries: list[MenuEntry], *, search: str, timeout: int = 3) -> str:
    """grub.cfg: menu on the serial console and the screen; the first entry boots after `timeout`."""
    lines = _header(search, timeout)
    for entry in entries:
        lines += _menu_entry(entry)
    return "\n".join(lines) + "\n"


def _header(search: str, timeout: int) -> list[str]:
    return [
        f"set timeout={timeout}",
        "set default=0",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        search,
        "",
    ]


def _menu_entry(entry: MenuEntry) -> list[str]:
    return [
        f'menuentry "{entry.title}" {{',
        "  insmod gzio",
        f"  linux {entry.kernel} {entry.cmdline}".rstrip(),
        f"  initrd {entry.initrd}",
        "}",
    ]


# --- finding the newest kernel at boot -----------------------------------------------------------------
# For images without links their kernel packages keep up to date (Fedora, openSUSE without /boot/vmlinuz,
# Debian without /vmlinuz): a kernel installed inside the running system must be booted next time, and GRUB
# cannot run the image's own grub-mkconfig. So grub.cfg looks at /boot and /usr/lib/modules itself, with
# upstream GRUB only: `for` over a wildcard (regexp.mod's file name expansion), `regexp` for the version,
# `test -pgt` to compare versions (the first differing run of digits, compared as a number), functions.

# Where a kernel's initrd may be in /boot, in GRUB's words ($2: the version), best first: as find_kernel looks.
BOOT_TIME_INITRDS = tuple(f'"/{p.format("$2")}"' for p in BOOT_INITRDS)

NEWEST_KERNEL = """\
# openos365: boot the newest kernel on this file system, found now rather than when the image was exported,
# so that a kernel installed inside the system boots next time. Without one, the kernel exported with it.
insmod regexp
set openos365_kernel={kernel}
set openos365_initrd={initrd}
set openos365_version=
# $1: a kernel, $2: its version, $3: an initrd to prefer (or nothing). Every path tested has an existing
# directory: GRUB prints an error for a missing one.
function openos365_consider {{
  if [ ! -f "$1" ]; then return; fi
  if regexp rescue "$2"; then return; fi
  for openos365_initrd_path in "$3" {initrds}; do
    if [ -n "$openos365_initrd_path" -a -f "$openos365_initrd_path" ]; then
      if [ -z "$openos365_version" ]; then
        set openos365_newer=1
      elif [ "$2" -pgt "$openos365_version" ]; then
        set openos365_newer=1
      else
        set openos365_newer=0
      fi
      if [ "$openos365_newer" = 1 ]; then
        set openos365_version="$2"
        set openos365_kernel="$1"
        set openos365_initrd="$openos365_initrd_path"
      fi
      return
    fi
  done
}}
for openos365_file in /boot/vmlinuz-*; do
  if regexp --set=1:openos365_found '/vmlinuz-([^/]+)$' "$openos365_file"; then
    openos365_consider "$openos365_file" "$openos365_found"
  fi
done
if [ -d /usr/lib/modules ]; then
  for openos365_file in /usr/lib/modules/*; do
    if [ -d "$openos365_file" ]; then
      if regexp --set=1:openos365_found '/modules/([^/]+)$' "$openos365_file"; then
        openos365_consider "$openos365_file/vmlinuz" "$openos365_found" "$openos365_file/initramfs.img"
      fi
    fi
  done
fi
export openos365_kernel
export openos365_initrd
set fallback=1
"""


def grub_word(text: str) -> str:
    """text as one literal word of GRUB script (single-quoted; a quote is closed, escaped and reopened)."""
    return "'" + text.replace("'", "'\\''") + "'"


def discovery_config(title: str, fallback: MenuEntry, *, search: str, timeout: int = 3) -> str:
    """grub.cfg that boots the newest kernel found at boot time (entry 0), and `fallback` (entry 1, the
    kernel found at export time) when that fails."""
    lines = _header(search, timeout)
    lines.append(NEWEST_KERNEL.format(kernel=grub_word(fallback.kernel), initrd=grub_word(fallback.initrd),
                                      initrds=" ".join(BOOT_TIME_INITRDS)))
    lines += _menu_entry(MenuEntry(title, '"$openos365_kernel"', '"$openos365_initrd"', fallback.cmdline))
    lines += _menu_entry(fallback)
    return "\n".join(lines) + "\n"


def search_by_uuid(fs_uuid: str) -> str:
    return f"search --no-floppy --fs-uuid --set=root {fs_uuid}"


def search_by_label(label: str) -> str:
    return f"search --no-floppy --label --set=root {label}"


def chain_config(search: str) -> str:
    """The grub.cfg a distribution's signed GRUB reads from the ESP: find the root, hand over to its config."""
    return (f"# written by openos365: find the system, then use its own GRUB configuration\n{search}\n"
            "set prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n")


def early_config(search: str, path: Path) -> Path:
    """The config embedded in a GRUB image: find the root and the prefix with grub.cfg."""
    path.write_text(f"{search}\nset prefix=($root)/boot/grub\n")
    return path


def mkimage(*, fmt: str, module_dir: Path, early_cfg: Path, output: Path, modules: list[str]) -> Path:
    run(["grub-mkimage", "-O", fmt, "-d", str(module_dir), "-c", str(early_cfg), "-p", "/boot/grub",
         "-o", str(output), *modules], step=f"grub-mkimage {fmt}", capture=True)
    return output


BIOS_CORE_MAX = 1024 * 1024 - 512  # the BIOS boot partition is 1 MiB


def install_bios(image: Path, *, core_img: Path, boot_img: Path, core_lba: int) -> None:
    """What grub-install does for BIOS/GPT, on a file: core.img into the BIOS boot partition, boot.img's
    boot code into the MBR (the protective partition table after byte 440 is kept), and two pointers."""
    core = core_img.read_bytes()
    if len(core) > BIOS_CORE_MAX:
        raise ValueError(f"core.img is {len(core)} bytes; the BIOS boot partition holds {BIOS_CORE_MAX}")
    with open(image, "r+b") as disk:
        disk.seek(core_lba * 512)
        disk.write(core)
        # diskboot.img (first sector of core.img) loads the rest from this blocklist start
        disk.seek(core_lba * 512 + 0x1F4)
        disk.write(struct.pack("<Q", core_lba + 1))
        disk.seek(0)
        disk.write(boot_img.read_bytes()[:440])
        # GRUB_BOOT_MACHINE_KERNEL_SECTOR: where boot.img finds core.img
        disk.seek(0x5C)
        disk.write(struct.pack("<Q", core_lba))
