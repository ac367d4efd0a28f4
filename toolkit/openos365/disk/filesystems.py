"""Filesystems and archives written from a directory: ext4 and FAT straight into a disk image at an offset,
squashfs, and reproducible tars. No loop device, no mount. Every exporter calls down to these, never across
to another exporter."""

from __future__ import annotations

import os
from pathlib import Path

from .. import log
from ..imagetree import ImageTree
from ..runner import run

# GRUB 2.06 and older e2fsck cannot read these newer ext4 features that recent mke2fs.conf files enable.
EXT4_FEATURES_OFF = "^orphan_file,^metadata_csum_seed"


def pin_atimes(tree: Path, epoch: int) -> None:
    """Every atime older than the epoch becomes the epoch (mtimes are kept).

    mke2fs -d copies each file's atime into its inode: with SOURCE_DATE_EPOCH it clamps newer times to the
    epoch but keeps older ones, and any read (relatime; mke2fs itself) moves an atime to now. Without this,
    the first mkfs after a flatten records the image's old atimes and every later one the epoch: the bytes
    would depend on whether the tree cache was cold. Hard-linked trees share these inodes with the cache,
    which is harmless: atimes carry no content."""
    epoch_ns = epoch * 1_000_000_000
    for _rel, dirnames, filenames, dir_fd in ImageTree(tree).walk():
        for name in [*dirnames, *filenames]:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if st.st_atime_ns < epoch_ns:
                os.utime(name, ns=(epoch_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def mkfs_ext4(image: Path, *, offset: int, size: int, tree: Path, uuid: str, label: str, epoch: int) -> None:
    """mke2fs -d populates the filesystem from the tree; -E offset writes it inside the disk file.

    A bare block count is read as KiB unless -b is given: always pass -b 4096 with the count.
    SOURCE_DATE_EPOCH/E2FSPROGS_FAKE_TIME, the hash seed and pinned atimes make it byte-reproducible,
    whatever the cache held (e2fsprogs >= 1.47.1).
    """
    pin_atimes(tree, epoch)
    env = {"SOURCE_DATE_EPOCH": str(epoch), "E2FSPROGS_FAKE_TIME": str(epoch), "MKE2FS_CONFIG": "/etc/mke2fs.conf"}
    run(["mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-U", uuid, "-O", EXT4_FEATURES_OFF,
         "-E", f"offset={offset},hash_seed={uuid},root_owner=0:0", "-d", str(tree), str(image), str(size // 4096)],
        env=env, step="make the root filesystem (mkfs.ext4 -d)", capture=True,
        hint="the root tree may not fit: try a larger --size")


def mkfs_vfat(image: Path, *, offset: int, size: int, label: str, fat32: bool = True) -> None:
    """FAT32 with 512-byte clusters (enough clusters to be FAT32 on a small ESP); --invariant pins ids.

    fat32=False lets mkfs.vfat pick FAT12/16: for images of a few MiB (an ISO's EFI boot image), which
    are too small for FAT32 (mtools would misread them).
    """
    fat = ["-F", "32", "-s", "1"] if fat32 else []
    run(["mkfs.vfat", *fat, "-n", label, "--invariant", f"--offset={offset // 512}",
         str(image), str(size // 1024)], step="make the EFI system partition (mkfs.vfat)", capture=True)


def _mtools_target(image: Path, offset: int) -> str:
    return f"{image}@@{offset}"


def fat_copy(image: Path, offset: int, files: dict[str, Path], epoch: int) -> None:
    """Copy host files into a FAT filesystem at `offset` (mtools: no mount). Keys are FAT paths."""
    env = {"MTOOLS_SKIP_CHECK": "1", "SOURCE_DATE_EPOCH": str(epoch)}
    target = _mtools_target(image, offset)
    dirs = sorted({str(Path(p).parent) for p in files} - {"/", "."}, key=len)
    made: set[str] = set()
    for directory in dirs:
        parts = Path(directory).parts[1:]
        for i in range(1, len(parts) + 1):
            sub = "/" + "/".join(parts[:i])
            if sub not in made:
                run(["mmd", "-D", "s", "-i", target, f"::{sub}"], env=env, capture=True, check=False)
                made.add(sub)
    for fat_path, host_path in sorted(files.items()):
        os.utime(host_path, (epoch, epoch))  # mcopy -m keeps the host mtime
        run(["mcopy", "-o", "-m", "-i", target, str(host_path), f"::{fat_path}"], env=env, capture=True,
            step=f"copy {fat_path} into FAT")
    log.note(f"copied {len(files)} files into the FAT filesystem at offset {offset}")


# zstd level 9: mksquashfs' default level (15) is 10x slower for 4 % less size
SQUASHFS_COMPRESSION: dict[str | None, list[str]] = {
    None: ["-comp", "zstd", "-Xcompression-level", "9"],
    "zstd": ["-comp", "zstd", "-Xcompression-level", "9"],
    "xz": ["-comp", "xz"],
    "gzip": ["-comp", "gzip"],
    "none": ["-noI", "-noId", "-noD", "-noF", "-noX"],
}


def squashfs_argv(tree: Path, output: Path, compression: str | None, epoch: int) -> list[str]:
    return ["mksquashfs", str(tree), str(output), "-noappend", "-no-progress", "-quiet",
            *SQUASHFS_COMPRESSION[compression], "-mkfs-time", str(epoch), "-all-time", str(epoch)]


def make_squashfs(tree: Path, output: Path, compression: str | None, epoch: int) -> Path:
    with log.step(f"Compressing the root tree (squashfs, {compression or 'zstd level 9'})"):
        # mksquashfs refuses SOURCE_DATE_EPOCH together with -mkfs-time/-all-time: the flags pin the times
        run(["env", "-u", "SOURCE_DATE_EPOCH", *squashfs_argv(tree, output, compression, epoch)],
            step="mksquashfs", capture=True)
        log.info(f"squashfs: {log.human_size(output.stat().st_size)}")
    return output


# GNU tar keeps what the tree has: numeric owners, xattrs (file capabilities), ACLs, hard links.
# Sorted names and clamped mtimes make the same tree give the same bytes.
def tar_argv(tree: Path, epoch: int, output: Path, *, exclude: tuple[str, ...] = ()) -> list[str]:
    argv = ["tar", "--create", "--file", str(output), "--directory", str(tree), "--sort=name",
            "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--format=posix",
            f"--mtime=@{epoch}", "--clamp-mtime",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime"]
    argv += [f"--exclude=./{pattern}" for pattern in exclude]
    return [*argv, "."]
