"""CPU architectures: what differs between an x86_64 and an arm64 image, in one place.

An image's architecture comes from its own files (the ELF header of its init or shell), so a tree from any
source (layer, registry, archive) is booted the way it was built. `--arch` on build, bootstrap and pull picks
the architecture to make or fetch; builds for a foreign one run its binaries through qemu-user (binfmt_misc).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from .imagetree import ImageTree


@dataclass(frozen=True)
class Arch:
    name: str               # OCI and Debian name: amd64, arm64
    machine: str            # the kernel's (uname -m): x86_64, aarch64
    elf_machine: int        # e_machine of its ELF binaries
    efi_platform: str       # GRUB's UEFI platform
    efi_suffix: str         # BOOT<SUFFIX>.EFI, shim<suffix>.efi, grub<suffix>.efi
    bios: bool              # has a PC BIOS (GRUB i386-pc)
    root_type: str          # GPT type of the root partition (Discoverable Partitions), what systemd-repart grows
    repart_type: str        # the same, as systemd-repart names it
    console: str            # the serial console of qemu's machine (and of most clouds' VMs)
    qemu: str               # qemu's system emulator
    kernel_package: str     # Debian's
    grub_efi_package: str   # Debian's, GRUB's modules for efi_platform

    @property
    def efi_loader(self) -> str:
        """The removable-media path firmware boots without NVRAM entries."""
        return f"/EFI/BOOT/BOOT{self.efi_suffix.upper()}.EFI"

    def firmwares(self, requested: str) -> str:
        """--firmware as this architecture can honour it: `both` means every kind it has."""
        if self.bios:
            return requested
        if requested == "bios":
            raise UserError(f"--firmware bios: {self.name} has no PC BIOS",
                            hint="use --firmware uefi (or leave it out)")
        return "uefi"


ARCHES = {
    "amd64": Arch("amd64", "x86_64", 62, "x86_64-efi", "x64", True, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
                  "root-x86-64", "ttyS0,115200", "qemu-system-x86_64", "linux-image-amd64", "grub-efi-amd64-bin"),
    "arm64": Arch("arm64", "aarch64", 183, "arm64-efi", "aa64", False, "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
                  "root-arm64", "ttyAMA0,115200", "qemu-system-aarch64", "linux-image-arm64", "grub-efi-arm64-bin"),
}
ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "arm64/v8": "arm64"}
DEFAULT = "amd64"


def get(name: str | None) -> Arch:
    """An architecture by any of its names (amd64, x86_64, arm64, aarch64, linux/arm64); None: the host's."""
    if name is None:
        return host()
    key = name.lower().removeprefix("linux/")
    key = ALIASES.get(key, key)
    if key not in ARCHES:
        raise UserError(f"--arch {name}: not a supported architecture",
                        hint=f"use one of: {', '.join(ARCHES)} (or x86_64, aarch64)")
    return ARCHES[key]


def host() -> Arch:
    machine = platform.machine().lower()
    return ARCHES.get(ALIASES.get(machine, machine), ARCHES[DEFAULT])


# Binaries every Linux userland has, to read the architecture off: the init, the shell, the loader.
PROBES = ("usr/lib/systemd/systemd", "lib/systemd/systemd", "usr/bin/bash", "bin/bash", "bin/sh", "usr/bin/sh",
          "bin/busybox", "usr/bin/env")


def of_elf(header: bytes) -> Arch | None:
    """The architecture an ELF header names, or None (not ELF, or an unknown machine)."""
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    byteorder = "little" if header[5] == 1 else "big"
    machine = int.from_bytes(header[18:20], byteorder)
    return next((a for a in ARCHES.values() if a.elf_machine == machine), None)


def of_tree(tree: ImageTree) -> Arch:
    """The image's architecture, from its own binaries (read through the tree: links stay inside it)."""
    for rel in PROBES:
        if tree.is_file(rel):
            found = of_elf(tree.head(rel, 64))
            if found is not None:
                return found
    return ARCHES[DEFAULT]


def runs_natively(arch: Arch) -> bool:
    return arch.machine == host().machine


BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


def emulation_problem(arch: Arch, binfmt_dir: Path = BINFMT_DIR) -> str | None:
    """Why this host cannot run the architecture's binaries in a build (None: it can): foreign binaries run
    through a qemu-user interpreter registered with binfmt_misc, with the F flag (loaded once, so it works
    inside the build's chroot)."""
    if runs_natively(arch):
        return None
    if not (binfmt_dir / "status").exists():
        return "binfmt_misc is not mounted"
    entry = binfmt_dir / f"qemu-{arch.machine}"
    try:
        text = entry.read_text()
    except OSError:
        return f"no qemu-user interpreter for {arch.machine} is registered with binfmt_misc"
    if not text.startswith("enabled"):
        return f"the qemu-{arch.machine} binfmt_misc entry is disabled"
    flags = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags:")), "")
    if "F" not in flags:
        return f"the qemu-{arch.machine} binfmt_misc entry lacks the F flag (needed inside a build's chroot)"
    return None


EMULATION_HINT = ("apt-get install qemu-user-static binfmt-support arch-test; mount -t binfmt_misc binfmt_misc "
                  "/proc/sys/fs/binfmt_misc; update-binfmts --enable (scripts/setup-host.sh does this)")


def require_emulation(arch: Arch, purpose: str) -> None:
    problem = emulation_problem(arch)
    if problem:
        raise UserError(f"{purpose} for {arch.name} on this {host().machine} host: {problem}", hint=EMULATION_HINT)


def tag_suffix(arch: Arch) -> str:
    """What image tags and artifact names carry for a non-default architecture: '' or '-arm64'."""
    return "" if arch.name == DEFAULT else f"-{arch.name}"

