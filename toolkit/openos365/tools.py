"""Host tools: which command needs which tool, and which package provides it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import MissingToolError
from .runner import run, which


@dataclass(frozen=True)
class Tool:
    command: str
    debian: str
    fedora: str
    opensuse: str


TOOLS: dict[str, Tool] = {t.command: t for t in [
    Tool("podman", "podman", "podman", "podman"),
    Tool("mmdebstrap", "mmdebstrap", "mmdebstrap", "mmdebstrap"),
    Tool("skopeo", "skopeo", "skopeo", "skopeo"),
    Tool("tar", "tar", "tar", "tar"),
    Tool("cp", "coreutils", "coreutils", "coreutils"),
    Tool("sfdisk", "fdisk", "util-linux", "util-linux"),
    Tool("mkfs.ext4", "e2fsprogs", "e2fsprogs", "e2fsprogs"),
    Tool("mkfs.vfat", "dosfstools", "dosfstools", "dosfstools"),
    Tool("mcopy", "mtools", "mtools", "mtools"),
    Tool("grub-mkimage", "grub-common", "grub2-tools", "grub2"),
    Tool("qemu-img", "qemu-utils", "qemu-img", "qemu-tools"),
    Tool("mksquashfs", "squashfs-tools", "squashfs-tools", "squashfs"),
    Tool("mkfs.erofs", "erofs-utils", "erofs-utils", "erofs-utils"),
    Tool("xorriso", "xorriso", "xorriso", "xorriso"),
    Tool("zstd", "zstd", "zstd", "zstd"),
    Tool("xz", "xz-utils", "xz", "xz"),
    Tool("gzip", "gzip", "gzip", "gzip"),
    Tool("qemu-system-x86_64", "qemu-system-x86", "qemu-system-x86-core", "qemu-x86"),
    Tool("qemu-system-aarch64", "qemu-system-arm qemu-efi-aarch64", "qemu-system-aarch64-core edk2-aarch64",
         "qemu-arm qemu-uefi-aarch64"),
    Tool("docker-registry", "docker-registry", "docker-distribution", "distribution-registry"),
    Tool("openssl", "openssl", "openssl", "openssl"),
]}

# Firmware files the boot tests need (not commands, but checked the same way by doctor).
OVMF_CODE_CANDIDATES = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd",
                        "/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/qemu/ovmf-x86_64-code.bin")


def missing(commands: list[str]) -> list[Tool]:
    return [TOOLS[c] for c in commands if which(c) is None]


def require(commands: list[str], *, purpose: str) -> None:
    """Fail before any work when a tool is missing, naming the packages to install."""
    absent = missing(commands)
    if absent:
        names = ", ".join(t.command for t in absent)
        debian = " ".join(sorted({t.debian for t in absent}))
        fedora = " ".join(sorted({t.fedora for t in absent}))
        raise MissingToolError(f"{purpose} needs {names}, which is not installed",
                               hint=f"Debian/Ubuntu: apt-get install {debian}; Fedora: dnf install {fedora}")


def e2fsprogs_version() -> tuple[int, ...] | None:
    mke2fs = which("mke2fs")
    if mke2fs is None:
        return None
    text = run([mke2fs, "-V"], capture=True, check=False)
    found = re.search(r"mke2fs (\d+)\.(\d+)(?:\.(\d+))?", text.stdout + " ".join(text.tail))
    if not found:
        return None
    return tuple(int(x) for x in found.groups(default="0"))


def reproducible_ext4() -> bool:
    """e2fsprogs < 1.47.1 copies atime/ctime of the source tree into the image: never byte-identical.
    (1.47.1 and later clamp times to SOURCE_DATE_EPOCH but keep older atimes: filesystems.pin_atimes.)"""
    version = e2fsprogs_version()
    return version is not None and version >= (1, 47, 1)


_VERSION_FLAGS = {"mkfs.ext4": "-V", "mksquashfs": "-version", "xorriso": "-version", "mkfs.erofs": "--help"}


def version_of(command: str) -> str | None:
    """The first line a tool prints about its version, for the manifest (None when not installed)."""
    path = which(command)
    if path is None:
        return None
    result = run([path, _VERSION_FLAGS.get(command, "--version")], capture=True, check=False)
    text = (result.stdout.strip() or "\n".join(result.tail)).splitlines()
    return text[0].strip() if text else None
