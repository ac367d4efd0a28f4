"""Apply an image layer tar to a root tree, the way a container engine does, and safely.

- whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`) are applied;
- ownership (numeric), modes incl. setuid/setgid/sticky, hard links, symlinks, device nodes, fifos,
  xattrs (SCHILY.xattr.*: file capabilities, ACLs, SELinux labels) and mtimes are kept;
- nothing is ever written outside the root: member names that are absolute or contain `..`, writes
  through a symlink that leaves the tree, and hard links to outside are refused (HostileLayerError).

Symlinks are resolved the way a container sees them (chroot semantics): an absolute target such as
`/run` in `var/run -> /run` means `<root>/run`.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from typing import IO

from .errors import UserError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_MAX_SYMLINKS = 40


class HostileLayerError(UserError):
    """A layer tar tried to write outside the root tree."""


@dataclass
class ApplyStats:
    entries: int = 0
    bytes: int = 0
    skipped_devices: int = 0
    skipped_xattrs: int = 0
    dirs: list[tuple[str, int, float]] = field(default_factory=list)   # (path, mode, mtime), set last


def _clean_name(name: str, source: str) -> str:
    """Normalise a member name to a relative path; refuse absolute names and `..` components."""
    raw = name
    while name.startswith("./"):
        name = name[2:]
    if name.startswith("/"):
        raise HostileLayerError(f"{source}: member '{raw}' has an absolute path",
                                hint="this image was not made by a container engine; rebuild it")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise HostileLayerError(f"{source}: member '{raw}' climbs out of the root with '..'",
                                hint="this image is refused; rebuild it with a container engine")
    return "/".join(parts)


def resolve_in_root(root: str, rel: str, source: str = "layer", *, follow_last: bool = False) -> str:
    """Host path of `rel` inside root, following symlinks of every component but the last one
    (and the last one too with follow_last).

    Absolute symlink targets are taken relative to root. A relative target that climbs above the root
    is a symlink escape: refused.
    """
    todo = [p for p in rel.split("/") if p] if rel else []
    if not todo:
        return root
    last = None if follow_last else todo.pop()
    resolved: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                raise HostileLayerError(f"{source}: path '{rel}' goes through a symlink that leaves the "
                                        "root tree", hint="this image is refused; fix the symlink")
            resolved.pop()
            continue
        host = os.path.join(root, *resolved, part)
        if os.path.islink(host):
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise HostileLayerError(f"{source}: too many symlinks resolving '{rel}'")
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            todo = [p for p in target.split("/") if p] + todo
            continue
        resolved.append(part)
    return os.path.join(root, *resolved, *([last] if last else []))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _is_root() -> bool:
    return os.geteuid() == 0


class LayerApplier:
    """Applies layer tars in order to one root directory."""

    def __init__(self, root: str, *, clamp_mtime: int | None = None):
        self.root = os.path.abspath(root)
        self.clamp = clamp_mtime
        self.stats = ApplyStats()
        os.makedirs(self.root, exist_ok=True)

    def apply(self, fileobj: IO[bytes], source: str) -> None:
        """Apply one layer, streamed (gzip/zstd-less tar or gzip tar; no seeking needed)."""
        created: set[str] = set()
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                self._apply_member(tar, member, source, created)

    def finish(self) -> ApplyStats:
        """Directory modes and times last: entries created inside change a directory's mtime, and a
        read-only directory (Fedora's 0555 /usr/bin) must stay writable until its entries are in."""
        done: set[str] = set()
        for path, mode, mtime in reversed(self.stats.dirs):  # children first; a later layer's entry wins
            if path in done:
                continue
            done.add(path)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, mode)
                os.utime(path, (mtime, mtime), follow_symlinks=False)
        self.stats.dirs.clear()
        os.chmod(self.root, 0o755)
        return self.stats

    def _apply_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, source: str,
                      created: set[str]) -> None:
        rel = _clean_name(member.name, source)
        if not rel:  # the root entry itself
            return
        parent_rel, _, base = rel.rpartition("/")
        if base == OPAQUE:
            self._opaque(resolve_in_root(self.root, parent_rel, source, follow_last=True), rel, created)
            return
        if base.startswith(WHITEOUT):
            hidden = base[len(WHITEOUT):]
            if hidden in ("", ".", ".."):
                raise HostileLayerError(f"{source}: whiteout '{member.name}' names no entry of its directory",
                                        hint="this image is refused; rebuild it with a container engine")
            target = resolve_in_root(self.root, f"{parent_rel}/{hidden}", source)
            _remove(target)
            return
        dest = resolve_in_root(self.root, rel, source)
        # parents missing from the tar are created as an engine does (0755, root); the resolved path has
        # no symlinks in it, so this cannot leave the root
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        self._create(tar, member, dest, rel, source)
        created.add(rel)
        self.stats.entries += 1

    def _opaque(self, directory: str, rel: str, created: set[str]) -> None:
        prefix = rel.rpartition("/")[0]
        if not os.path.isdir(directory):
            return
        for name in os.listdir(directory):
            if f"{prefix}/{name}".lstrip("/") not in created:
                _remove(os.path.join(directory, name))

    def _create(self, tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str, rel: str, source: str) -> None:
        exists = os.path.lexists(dest)
        if member.isdir():
            if exists and not (os.path.isdir(dest) and not os.path.islink(dest)):
                os.unlink(dest)
                exists = False
            if not exists:
                os.mkdir(dest, 0o700)
        else:
            if exists:
                _remove(dest)
            if member.isreg():
                self._write_file(tar, member, dest)
            elif member.issym():
                os.symlink(member.linkname, dest)
            elif member.islnk():
                self._hardlink(member, dest, source)
                return  # a hard link shares the target's inode: its metadata is already there
            elif member.ischr() or member.isblk() or member.isfifo():
                if not self._mknod(member, dest):
                    return
            else:
                return  # unknown types (e.g. GNU sparse markers handled by tarfile) are ignored
        self._metadata(member, dest)

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str) -> None:
        src = tar.extractfile(member)
        assert src is not None
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        self.stats.bytes += member.size

    def _hardlink(self, member: tarfile.TarInfo, dest: str, source: str) -> None:
        target_rel = _clean_name(member.linkname, source)
        target = resolve_in_root(self.root, target_rel, source)
        if not os.path.lexists(target):
            raise HostileLayerError(f"{source}: hard link '{member.name}' points at '{member.linkname}', "
                                    "which is not in the tree", hint="this image is refused")
        if os.path.isdir(target) and not os.path.islink(target):
            raise HostileLayerError(f"{source}: hard link '{member.name}' points at a directory")
        os.link(target, dest, follow_symlinks=False)

    def _mknod(self, member: tarfile.TarInfo, dest: str) -> bool:
        kind = stat.S_IFIFO if member.isfifo() else stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        try:
            os.mknod(dest, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        except PermissionError:
            self.stats.skipped_devices += 1
            return False
        return True

    def _metadata(self, member: tarfile.TarInfo, dest: str) -> None:
        if _is_root():
            os.lchown(dest, member.uid, member.gid)
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                self._setxattr(dest, key[len("SCHILY.xattr."):], value)
        mtime = member.mtime if self.clamp is None else min(member.mtime, self.clamp)
        if member.isdir():
            self.stats.dirs.append((dest, member.mode & 0o7777, mtime))
            return
        if not member.issym():
            os.chmod(dest, member.mode & 0o7777)  # after chown: chown clears setuid bits
        os.utime(dest, (mtime, mtime), follow_symlinks=False)

    def _setxattr(self, dest: str, name: str, value: str) -> None:
        data = value.encode("utf-8", "surrogateescape")
        try:
            os.setxattr(dest, name, data, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                self.stats.skipped_xattrs += 1
            else:
                raise
