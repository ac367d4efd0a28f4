"""Apply an image layer tar to a root tree, the way a container engine does, and safely.

A layer may also come as a directory, the way the overlay storage driver keeps it unpacked (whiteouts as
0/0 character devices, opaque directories marked by an xattr): apply_overlay_dir replays it with the same
rules, which lets a child image's tree start from its parent's.

- whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) follow the OCI image-layer spec: they hide
  entries of lower layers only, wherever they stand in the layer (before or after the layer's own entries);
- ownership (numeric), modes incl. setuid/setgid/sticky, hard links, symlinks, device nodes, fifos,
  xattrs (SCHILY.xattr.*: file capabilities, ACLs, SELinux labels) and mtimes are kept; sparse members stay
  sparse;
- nothing is ever written outside the root: every path is resolved inside it by imagetree (symlinks as the
  container sees them, fds opened O_NOFOLLOW); member names that are absolute or contain `..`, and hard links
  to what is not in the tree, are refused (HostileLayerError);
- a layer may expand to at most `limit` bytes of file data, checked before each file is written.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from typing import IO

from .errors import UserError
from .imagetree import ImageTree, TreeError, ensure_dir_at, is_root, lstat_at, proc_path, split

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_RDIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsupportedLayerDir(Exception):
    """A layer directory uses an overlay feature that cannot be replayed from it alone (redirect, metacopy)."""


class DirMember(tarfile.TarInfo):
    """An entry of a layer directory as a tar member: its data is read from src_fd, its mtime kept to the ns."""

    src_fd: int = -1
    mtime_ns: int = 0


class HostileLayerError(UserError):
    """A layer tar tried to write outside the root tree, or to expand beyond its limit."""


@dataclass
class ApplyStats:
    entries: int = 0
    bytes: int = 0
    skipped_devices: int = 0
    skipped_xattrs: int = 0
    clamped: int = 0          # entries whose mtime was newer than clamp_mtime


def _clean_name(name: str, source: str) -> str:
    """Normalise a member name to a relative path; refuse absolute names and `..` components."""
    if name.startswith("/"):
        raise HostileLayerError(f"{source}: member '{name}' has an absolute path",
                                hint="this image was not made by a container engine; rebuild it")
    parts = split(name)
    if ".." in parts:
        raise HostileLayerError(f"{source}: member '{name}' climbs out of the root with '..'",
                                hint="this image is refused; rebuild it with a container engine")
    return "/".join(parts)


class LayerApplier:
    """Applies layer tars in order to one root directory."""

    def __init__(self, root: str, *, clamp_mtime: int | None = None):
        self.root = os.path.abspath(root)
        self.tree = ImageTree(self.root, "layer")
        self.clamp = clamp_mtime
        self.stats = ApplyStats()
        self.dir_meta: dict[str, tuple[int, int]] = {}    # canonical path -> (mode, mtime ns), applied last
        self._parents: dict[str, tuple[int, str]] = {}     # member's parent -> (O_PATH fd, canonical path)
        self._stale_parents = False
        os.makedirs(self.root, mode=0o700, exist_ok=True)

    def apply(self, fileobj: IO[bytes], source: str, *, limit: int | None = None) -> None:
        """Apply one uncompressed layer tar, streamed; refuse it once its files exceed `limit` bytes."""
        created: set[str] = set()
        budget = [limit if limit is not None else -1]
        try:
            with tarfile.open(fileobj=fileobj, mode="r|") as tar:
                for member in tar:
                    self._apply_member(tar, member, source, created, budget)
        except tarfile.TarError as exc:
            raise UserError(f"{source}: not a readable layer tar ({exc})",
                            hint="the archive is damaged or truncated; save or pull the image again") from exc

    def apply_overlay_dir(self, layer_dir: str, source: str) -> None:
        """Apply one layer kept unpacked by the overlay storage driver (its `diff` directory), walked
        without following any symlink. Raises UnsupportedLayerDir for what only the kernel's overlay
        could resolve (redirected directories, metadata-only copies, user-namespace xattrs)."""
        created: set[str] = set()
        budget = [-1]
        first_links: dict[tuple[int, int], str] = {}
        for rel, _dirs, others, dir_fd in ImageTree(layer_dir, source).walk():
            if rel:
                xattrs = _overlay_xattrs(proc_path(dir_fd), rel)
                opaque = xattrs.pop(_OPAQUE_XATTR, None)
                self._apply_member(None, _dir_member(rel, os.fstat(dir_fd), xattrs), source, created, budget)
                if opaque == b"y":
                    self._apply_member(None, tarfile.TarInfo(f"{rel}/{OPAQUE}"), source, created, budget)
            for name in others:
                path = f"{rel}/{name}" if rel else name
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    whiteout = f"{rel}/{WHITEOUT}{name}" if rel else f"{WHITEOUT}{name}"
                    self._apply_member(None, tarfile.TarInfo(whiteout), source, created, budget)
                    continue
                if stat.S_ISSOCK(st.st_mode):
                    continue     # no layer tar carries sockets
                link_key = (st.st_dev, st.st_ino)
                if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and link_key in first_links:
                    member = DirMember(path)
                    member.type, member.linkname = tarfile.LNKTYPE, first_links[link_key]
                    self._apply_member(None, member, source, created, budget)
                    continue
                first_links[link_key] = path
                self._apply_dir_entry(dir_fd, name, path, st, source, created, budget)

    def _apply_dir_entry(self, dir_fd: int, name: str, path: str, st: os.stat_result, source: str,
                         created: set[str], budget: list[int]) -> None:
        if not stat.S_ISREG(st.st_mode):
            xattrs = _overlay_xattrs(proc_path(dir_fd, name), path, follow=False)
            self._apply_member(None, _dir_member(path, st, xattrs, dir_fd=dir_fd, name=name), source, created, budget)
            return
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            member = _dir_member(path, os.fstat(src), _overlay_xattrs(src, path))
            member.src_fd = src
            self._apply_member(None, member, source, created, budget)
        finally:
            os.close(src)

    def finish(self) -> ApplyStats:
        """Directory modes and times last: entries created inside change a directory's mtime, and a
        read-only directory (Fedora's 0555 /usr/bin) must stay writable until its entries are in.
        Each directory is reopened from the root without following any symlink: a directory that a later
        layer replaced (by a symlink to anywhere) is skipped, never chmodded through."""
        for rel in sorted(self.dir_meta, key=lambda r: r.count("/"), reverse=True):
            mode, mtime = self.dir_meta[rel]
            fd = self._open_dir_strict(rel)
            if fd is None:
                continue
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)
        self.dir_meta.clear()
        self._drop_parents()
        os.chmod(self.root, 0o755)
        return self.stats

    def _open_dir_strict(self, rel: str) -> int | None:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for part in split(rel):
            try:
                sub = os.open(part, _RDIR, dir_fd=fd)
            except OSError:
                sub = None
            os.close(fd)
            if sub is None:
                return None
            fd = sub
        return fd

    # --- members ----------------------------------------------------------------------------------------

    def _apply_member(self, tar: tarfile.TarFile | None, member: tarfile.TarInfo, source: str, created: set[str],
                      budget: list[int]) -> None:
        rel = _clean_name(member.name, source)
        if not rel:  # the root entry itself
            return
        parent_rel, _, base = rel.rpartition("/")
        if base == OPAQUE:
            self._hide_lower(self.tree.resolve(parent_rel, follow=True), created)
            return
        if base.startswith(WHITEOUT):
            hidden = base[len(WHITEOUT):]
            if hidden in ("", ".", ".."):
                raise HostileLayerError(f"{source}: whiteout '{member.name}' names no entry of its directory",
                                        hint="this image is refused; rebuild it with a container engine")
            self._whiteout(f"{parent_rel}/{hidden}", created)
            return
        if member.isreg():
            self._charge(member, source, budget)
        try:
            fd, parent = self._parent_dir(parent_rel)
        except TreeError as exc:
            raise HostileLayerError(f"{source}: member '{member.name}': {exc.message}",
                                    hint="this image is refused; rebuild it with a container engine") from exc
        canonical = f"{parent}/{base}" if parent else base
        self._create(tar, member, fd, base, canonical, source)
        if self._stale_parents:
            self._drop_parents()
        created.add(canonical)
        self.stats.entries += 1

    def _parent_dir(self, parent_rel: str) -> tuple[int, str]:
        """The directory a member goes into (resolved inside the tree, made when missing), cached: members
        of one directory follow each other. The cache is dropped whenever an entry that could change how a
        path resolves (a directory or a symlink) is removed or replaced."""
        hit = self._parents.get(parent_rel)
        if hit is None:
            if len(self._parents) >= 256:
                self._drop_parents()
            hit = self._parents[parent_rel] = self.tree.open_dir(parent_rel, create=True)
        return hit

    def _drop_parents(self) -> None:
        for fd, _ in self._parents.values():
            os.close(fd)
        self._parents.clear()
        self._stale_parents = False

    def _charge(self, member: tarfile.TarInfo, source: str, budget: list[int]) -> None:
        size = sum(length for _, length in member.sparse) if member.sparse else member.size
        self.stats.bytes += size
        if budget[0] < 0:
            return
        budget[0] -= size
        if budget[0] < 0:
            raise HostileLayerError(f"{source}: the layer expands beyond its limit at '{member.name}'",
                                    hint="a layer may expand to 4x its compressed size + 64 GiB; if this image "
                                    "is genuine, raise OPENOS365_LAYER_LIMIT (e.g. 200G)")

    def _whiteout(self, rel: str, created: set[str]) -> None:
        """Hide rel of the lower layers. This layer's own rel (created before the marker) stays; a
        directory of this layer merged over a lower one loses the lower entries."""
        try:
            canonical = self.tree.resolve(rel)
        except TreeError:
            return   # its directory is a file (or a loop) below: there is nothing to hide
        if canonical not in created:
            self._remove(canonical)
        elif self.tree.is_dir(canonical) and not self.tree.is_symlink(canonical):
            self._hide_lower(canonical, created)

    def _hide_lower(self, directory: str, created: set[str]) -> None:
        """Remove everything below directory that this layer did not create (at any depth)."""
        for name in self.tree.listdir(directory):
            child = f"{directory}/{name}" if directory else name
            if child not in created:
                self._remove(child)
            elif self.tree.is_dir(child) and not self.tree.is_symlink(child):
                self._hide_lower(child, created)

    def _remove(self, canonical: str) -> None:
        self._drop_parents()
        if self.tree.remove(canonical):
            self._forget(canonical)

    def _forget(self, canonical: str) -> None:
        prefix = canonical + "/"
        for rel in [r for r in self.dir_meta if r == canonical or r.startswith(prefix)]:
            del self.dir_meta[rel]

    def _create(self, tar: tarfile.TarFile | None, member: tarfile.TarInfo, fd: int, name: str, canonical: str,
                source: str) -> None:
        existing = lstat_at(fd, name)
        if existing is not None and (stat.S_ISDIR(existing.st_mode) or stat.S_ISLNK(existing.st_mode)) \
                and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
            self._stale_parents = True   # a directory or symlink goes: paths may resolve differently now
        if member.isdir():
            dir_fd = ensure_dir_at(fd, name)
            try:
                self._owner_and_xattrs(member, dir_fd)
            finally:
                os.close(dir_fd)
            self.dir_meta[canonical] = (member.mode & 0o7777, self._mtime_ns(member))
            return
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            shutil.rmtree(name, dir_fd=fd)   # fd-based: never follows a symlink
            self._forget(canonical)
        elif existing is not None:
            os.unlink(name, dir_fd=fd)
        if member.isreg():
            self._write_file(tar, member, fd, name)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=fd)
            self._symlink_metadata(member, fd, name)
        elif member.islnk():
            self._hardlink(member, fd, name, source)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._mknod(member, fd, name)
        # other types (GNU long-name and sparse headers are handled by tarfile itself) are ignored

    def _mtime_ns(self, member: tarfile.TarInfo) -> int:
        """Whole seconds from a tar (as engines extract them), nanoseconds from a layer directory."""
        mtime = member.mtime_ns if isinstance(member, DirMember) else int(member.mtime) * 1_000_000_000
        if self.clamp is not None and mtime > self.clamp * 1_000_000_000:
            self.stats.clamped += 1
            return self.clamp * 1_000_000_000
        return mtime

    def _write_file(self, tar: tarfile.TarFile | None, member: tarfile.TarInfo, fd: int, name: str) -> None:
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        try:
            with os.fdopen(out, "wb", closefd=False) as fh:
                if member.sparse and tar is not None:
                    # The stored data segments follow each other in the archive. A streamed tarfile cannot
                    # seek its member reader (which would expand the holes anyway), so they are read from
                    # the archive stream itself; tarfile then skips forward to the next header as usual.
                    stream = tar.fileobj
                    assert stream is not None
                    stream.seek(member.offset_data)
                    for offset, length in member.sparse:
                        fh.seek(offset)
                        _copy(stream, fh, length)
                    fh.truncate(member.size)
                elif isinstance(member, DirMember):
                    _copy_extents(member.src_fd, out, member.size)
                else:
                    assert tar is not None
                    src = tar.extractfile(member)
                    assert src is not None
                    _copy(src, fh, member.size)
            self._owner_and_xattrs(member, out)
            os.fchmod(out, member.mode & 0o7777)  # after chown: chown clears setuid bits
            os.utime(out, ns=(self._mtime_ns(member),) * 2)
        finally:
            os.close(out)

    def _hardlink(self, member: tarfile.TarInfo, fd: int, name: str, source: str) -> None:
        target_rel = _clean_name(member.linkname, source)
        try:
            with self.tree.at(target_rel) as (target_fd, target_name, _):
                target = lstat_at(target_fd, target_name) if target_name else None
                if target is None:
                    raise FileNotFoundError(target_rel)
                if stat.S_ISDIR(target.st_mode):
                    raise HostileLayerError(f"{source}: hard link '{member.name}' points at a directory")
                os.link(target_name, name, src_dir_fd=target_fd, dst_dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError, TreeError) as exc:
            raise HostileLayerError(f"{source}: hard link '{member.name}' points at '{member.linkname}', "
                                    "which is not in the tree", hint="this image is refused") from exc
        # a hard link shares the target's inode: its metadata is already there

    def _mknod(self, member: tarfile.TarInfo, fd: int, name: str) -> None:
        kind = stat.S_IFIFO if member.isfifo() else stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        try:
            os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=fd)
        except PermissionError:
            self.stats.skipped_devices += 1
            return
        node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:   # an O_PATH fd, reached through /proc: the node is never opened (no device driver runs)
            if is_root():
                os.chown(proc_path(node), member.uid, member.gid)
            self._xattrs(member, proc_path(node), follow=True)
            os.chmod(proc_path(node), member.mode & 0o7777)
            os.utime(proc_path(node), ns=(self._mtime_ns(member),) * 2)
        finally:
            os.close(node)

    def _symlink_metadata(self, member: tarfile.TarInfo, fd: int, name: str) -> None:
        if is_root():
            os.chown(name, member.uid, member.gid, dir_fd=fd, follow_symlinks=False)
        self._xattrs(member, proc_path(fd, name), follow=False)
        os.utime(name, ns=(self._mtime_ns(member),) * 2, dir_fd=fd, follow_symlinks=False)

    def _owner_and_xattrs(self, member: tarfile.TarInfo, fd: int) -> None:
        if is_root():
            os.fchown(fd, member.uid, member.gid)
        self._xattrs(member, fd, follow=True)

    def _xattrs(self, member: tarfile.TarInfo, target: int | str, *, follow: bool) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            data = value.encode("utf-8", "surrogateescape")
            try:
                os.setxattr(target, key[len("SCHILY.xattr."):], data, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                    raise
                self.stats.skipped_xattrs += 1


def _copy(src: IO[bytes], dest: IO[bytes], length: int) -> None:
    while length > 0:
        chunk = src.read(min(length, 1 << 20))
        if not chunk:
            raise tarfile.ReadError("unexpected end of data")
        dest.write(chunk)
        length -= len(chunk)


_OPAQUE_XATTR = "trusted.overlay.opaque"


def _overlay_xattrs(target: int | str, rel: str, *, follow: bool = True) -> dict[str, bytes]:
    """The entry's xattrs, as a layer tar would carry them (the opaque marker kept for the caller).

    Any other overlay xattr means the directory alone does not say what the layer holds."""
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    xattrs: dict[str, bytes] = {}
    for key in names:
        if key.startswith(("trusted.overlay.", "user.overlay.")) and key != _OPAQUE_XATTR:
            raise UnsupportedLayerDir(f"{rel}: {key}")
        xattrs[key] = os.getxattr(target, key, follow_symlinks=follow)
    return xattrs


def _dir_member(path: str, st: os.stat_result, xattrs: dict[str, bytes], *, dir_fd: int = -1,
                name: str = "") -> DirMember:
    member = DirMember(path)
    member.mode, member.uid, member.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    member.mtime, member.mtime_ns = st.st_mtime_ns // 1_000_000_000, st.st_mtime_ns
    member.pax_headers = {f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                          for key, value in xattrs.items()}
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFDIR:
        member.type = tarfile.DIRTYPE
    elif kind == stat.S_IFREG:
        member.type, member.size = tarfile.REGTYPE, st.st_size
    elif kind == stat.S_IFLNK:
        member.type, member.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dir_fd)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        member.type = tarfile.CHRTYPE if kind == stat.S_IFCHR else tarfile.BLKTYPE
        member.devmajor, member.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif kind == stat.S_IFIFO:
        member.type = tarfile.FIFOTYPE
    return member


def _copy_extents(src: int, dest: int, size: int) -> None:
    """Copy a file's data segments only, in the kernel: holes stay holes, as cp makes them."""
    offset = 0
    while offset < size:
        try:
            data = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:    # nothing but a hole up to the end
                break
            raise
        end = min(os.lseek(src, data, os.SEEK_HOLE), size)
        position = data
        while position < end:
            copied = os.copy_file_range(src, dest, end - position, position, position)
            if copied == 0:
                raise OSError(errno.EIO, "the file shrank while it was copied")
            position += copied
        offset = end
    os.ftruncate(dest, size)
