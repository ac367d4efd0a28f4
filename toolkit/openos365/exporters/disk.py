"""--to raw|qcow2|vmdk|vhdx|vhd: a GPT disk that boots under BIOS and UEFI and grows on first boot.

No loop devices, no mounts: sfdisk on a file, mkfs.ext4 -d and mkfs.vfat at partition offsets, mtools,
GRUB images written into place. Every id is derived from the image id, every time from
SOURCE_DATE_EPOCH, so the same image and options give the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import customize, log, tools
from ..artifacts import atomic_path
from ..disk.image import build_raw_disk
from ..errors import UserError
from ..runner import run
from .base import ExportContext, Exporter


@dataclass(frozen=True)
class DiskFormat:
    extension: str
    qemu_format: str | None      # None: the raw image is the artifact
    qemu_options: tuple[str, ...] = ()
    note: str = ""


DISK_FORMATS: dict[str, DiskFormat] = {
    "raw": DiskFormat("raw", None, note="plain disk image"),
    "qcow2": DiskFormat("qcow2", "qcow2", note="QEMU/KVM, OpenStack"),
    "vmdk": DiskFormat("vmdk", "vmdk", ("-o", "subformat=streamOptimized"), "VMware, OVA (stream-optimised)"),
    "vhdx": DiskFormat("vhdx", "vhdx", ("-o", "subformat=dynamic"), "Hyper-V (dynamic)"),
    "vhd": DiskFormat("vhd", "vpc", ("-o", "subformat=fixed,force_size=on"), "Azure (fixed, 1 MiB aligned)"),
}
# zstd by default: about a third of the uncompressed size (qemu >= 5.1 reads it); --compression none when
# the export must be fastest (a developer's loop), gzip for old readers
QCOW2_COMPRESSION = {"zstd": ("-c", "-o", "compression_type=zstd"), "gzip": ("-c",), "none": ()}
QCOW2_DEFAULT_COMPRESSION = "zstd"


class DiskExporter(Exporter):
    tools = ("cp", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "grub-mkimage")
    customizes = True

    def __init__(self, fmt: str):
        self.name = fmt
        self.format = DISK_FORMATS[fmt]
        self.description = f"bootable GPT disk, BIOS + UEFI, grows on first boot ({self.format.note})"

    def required_tools(self, options: Any) -> list[str]:
        return [*self.tools, *(["qemu-img"] if self.format.qemu_format else [])]

    def validate(self, options: Any) -> None:
        if options.compression is None:
            return
        if self.name != "qcow2":
            raise UserError(f"--compression does not apply to --to {self.name}",
                            hint="only qcow2 compresses (zstd or gzip); compress raw disks with zstd or xz afterwards")
        if options.compression not in QCOW2_COMPRESSION:
            raise UserError(f"--compression {options.compression} is not available for qcow2",
                            hint="use zstd (qemu >= 5.1 to read it), gzip (zlib, any qemu) or none")

    def plan(self, ctx: ExportContext) -> list[str]:
        fw = ctx.options.firmware
        steps = [
            "copy the tree; write fstab (root by UUID, x-systemd.growfs), /etc/repart.d (grow root), hostname, "
            "empty machine-id, no SSH host keys" + customize.summary(ctx.options),
            "write GRUB modules and grub.cfg into /boot/grub (serial + screen console; it boots the kernel links "
            "the image's packages keep up to date, else the newest kernel it finds at boot)",
            f"lay out a GPT ({'BIOS boot, ' if fw != 'uefi' else ''}{'ESP, ' if fw != 'bios' else ''}root last) "
            "on a sparse file with sfdisk",
            "mkfs.ext4 -d the tree straight into the root partition",
        ]
        if fw != "bios":
            steps.append("mkfs.vfat the ESP and copy into it with mtools: the image's signed shim (as BOOTX64.EFI) "
                         "and GRUB with a grub.cfg that finds the root (Secure Boot; --secure-boot "
                         f"{ctx.options.secure_boot}), else GRUB's own BOOTX64.EFI")
        if fw != "uefi":
            steps.append("write GRUB core.img into the BIOS boot partition and boot.img into the MBR")
        if self.format.qemu_format:
            packed = f" ({self.compression(ctx.options)}-compressed)" if self.name == "qcow2" else ""
            steps.append(f"qemu-img convert to {self.name}{packed} {' '.join(self.format.qemu_options)}".rstrip())
        steps.append(f"rename to {ctx.outdir / (ctx.name + '.' + self.format.extension)}, write .sha256 and "
                     "manifest.json")
        return steps

    def export(self, ctx: ExportContext) -> tuple[list[Path], dict[str, Any]]:
        if not tools.reproducible_ext4():
            log.warn("e2fsprogs < 1.47.1: the disk will boot but is not byte-reproducible "
                     "(Debian 12: apt-get install -t bookworm-backports e2fsprogs)")
        raw, layout, details = build_raw_disk(ctx)
        final = ctx.outdir / f"{ctx.name}.{self.format.extension}"
        with atomic_path(final) as temp:
            if self.format.qemu_format is None:
                os.replace(raw, temp)
            else:
                with log.step(f"Converting to {self.name}"):
                    extra = QCOW2_COMPRESSION[self.compression(ctx.options)] if self.name == "qcow2" else ()
                    run(["qemu-img", "convert", "-f", "raw", "-O", self.format.qemu_format,
                         *self.format.qemu_options, *extra, str(raw), str(temp)], step=f"convert to {self.name}",
                        capture=True)
        compressed = {"compression": self.compression(ctx.options)} if self.name == "qcow2" else {}
        return [final], {"disk": {"format": self.name, "virtual_size": layout.total,
                                  "partitions": layout.describe(), **compressed, **details}}

    @staticmethod
    def compression(options: Any) -> str:
        return options.compression or QCOW2_DEFAULT_COMPRESSION
