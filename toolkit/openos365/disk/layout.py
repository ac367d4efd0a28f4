"""GPT layout maths and the sfdisk script that writes it onto a plain file (no loop device)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..log import human_size
from ..runner import run

SECTOR = 512
MIB = 1024 * 1024
ALIGN = MIB
BIOS_BOOT_SIZE = 1 * MIB
# 64 MiB of FAT32 with 512-byte clusters: above the 65525-cluster FAT32 floor that mtools and firmware
# need (a smaller FAT32 is read as FAT16), and room for GRUB or a systemd-boot with a few kernels.
ESP_SIZE = 64 * MIB
GPT_FOOTER = MIB  # backup GPT at the end, rounded to the alignment

TYPE_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
TYPE_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
TYPE_ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # Discoverable Partitions: systemd-repart grows it


@dataclass(frozen=True)
class Partition:
    name: str
    type_guid: str
    start: int       # bytes
    size: int        # bytes
    uuid: str

    @property
    def start_sector(self) -> int:
        return self.start // SECTOR

    @property
    def size_sectors(self) -> int:
        return self.size // SECTOR


@dataclass(frozen=True)
class Layout:
    total: int
    disk_guid: str
    partitions: tuple[Partition, ...]

    def get(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)

    @property
    def root(self) -> Partition:
        root = self.get("root")
        assert root is not None
        return root

    def describe(self) -> list[dict[str, object]]:
        return [{"name": p.name, "type": p.type_guid, "uuid": p.uuid, "start": p.start, "size": p.size}
                for p in self.partitions]


def align_up(value: int, align: int = ALIGN) -> int:
    return (value + align - 1) // align * align


def minimum_root_size(content_bytes: int, inodes: int) -> int:
    """ext4 room for the tree: data + 256-byte inodes + ~6% metadata/journal + 64 MiB slack."""
    return align_up(int(content_bytes * 1.06) + inodes * 256 + 64 * MIB)


def default_root_size(content_bytes: int, inodes: int) -> int:
    """Content plus headroom; the root grows to the real disk on first boot anyway."""
    return align_up(minimum_root_size(content_bytes, inodes) + max(512 * MIB, content_bytes // 4), 256 * MIB)


def plan(*, content_bytes: int, inodes: int, size: int | None, firmware: str, ids: dict[str, str],
         root_type: str = TYPE_ROOT_X86_64) -> Layout:
    """BIOS boot (bios/both) + ESP (uefi/both) + root, root last so it can grow into the free space. The root's
    type is the architecture's (Discoverable Partitions), which systemd-repart looks for."""
    parts: list[tuple[str, str, int]] = []
    if firmware in ("bios", "both"):
        parts.append(("bios", TYPE_BIOS_BOOT, BIOS_BOOT_SIZE))
    if firmware in ("uefi", "both"):
        parts.append(("esp", TYPE_ESP, ESP_SIZE))
    boot_space = ALIGN + sum(size for _, _, size in parts)
    needed = boot_space + minimum_root_size(content_bytes, inodes) + GPT_FOOTER
    if size is None:
        total = boot_space + default_root_size(content_bytes, inodes) + GPT_FOOTER
    else:
        total = align_up(size)
        if total < needed:
            raise UserError(f"--size {human_size(size)} is too small: the root tree needs about "
                            f"{human_size(needed)} of disk", hint=f"use --size {needed // MIB + 1}M or more, "
                            "or leave --size out (the root grows to the real disk on first boot)")
    result, offset = [], ALIGN
    for name, type_guid, part_size in parts:
        result.append(Partition(name, type_guid, offset, part_size, ids[name]))
        offset += part_size
    result.append(Partition("root", root_type, offset, total - GPT_FOOTER - offset, ids["root"]))
    return Layout(total, ids["disk"], tuple(result))


def sfdisk_script(layout: Layout) -> str:
    lines = ["label: gpt", f"label-id: {layout.disk_guid}", "unit: sectors", ""]
    for p in layout.partitions:
        lines.append(f'start={p.start_sector}, size={p.size_sectors}, type={p.type_guid}, uuid={p.uuid}, '
                     f'name="{p.name}"')
    return "\n".join(lines) + "\n"


def write_partition_table(image: str, layout: Layout) -> None:
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never", "--wipe-partitions", "never",
         image], input_text=sfdisk_script(layout), step="write the GPT", capture=True)

