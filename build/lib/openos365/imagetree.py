"""The one way openos365 touches an image's root tree on the host.

Images come from registries, so their content is untrusted input. Every host-side access to a tree —
reading, writing, removing, mkdir, chmod/chown, copying a file out or in, walking — goes through ImageTree:

- Paths resolve as the container sees them: symlinks are followed inside the tree, absolute targets and
  `..` are clamped at its root (as in a chroot). An image's `etc/ssh -> /etc/ssh` means the image's own
  /etc/ssh, never the build host's.
- The walk opens one directory at a time with O_PATH|O_NOFOLLOW relative to the one before, so a symlink
  swapped in between a check and its use cannot redirect it: there is no path string to re-resolve.
- The last component is never followed unless asked (follow=True). Writes replace an entry (a new file
  renamed over it), never write through what was there; the disk exporter relies on that, because its
  private copy shares inodes (hard links) with the cached tree.
- Reads take regular files only, with a size cap: `usr/lib/os-release -> /dev/zero` or a device node is an
  error that names the file, not a host device opened or memory exhausted.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import UserError

MAX_READ = 16 << 20            # bytes read into memory from one image file (configs, dpkg status, ELF heads)
MAX_SYMLINKS = 40              # as the kernel's own limit
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RDIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeError(UserError):
    """An image's tree is not what openos365 can use safely (a loop, a non-directory parent, a file too large)."""


def split(rel: str) -> list[str]:
    return [p for p in rel.split("/") if p not in ("", ".")]


def is_root() -> bool:
    return os.geteuid() == 0


def proc_path(fd: int, name: str = "") -> str:
    """The /proc path of an open fd (or of `name` in that directory, not followed): operations through it
    reach exactly that inode, which O_PATH fds cannot do by themselves (fchmod, fsetxattr)."""
    return f"/proc/self/fd/{fd}" + (f"/{name}" if name else "")


def lstat_at(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def ensure_dir_at(fd: int, name: str) -> int:
    """`name` in directory fd as a real directory (a file or symlink there is replaced; a new one is 0700
    until its mode is set); returns an O_RDONLY fd of it."""
    existing = lstat_at(fd, name)
    if existing is not None and not stat.S_ISDIR(existing.st_mode):
        os.unlink(name, dir_fd=fd)
        existing = None
    if existing is None:
        os.mkdir(name, 0o700, dir_fd=fd)
    return os.open(name, _RDIR, dir_fd=fd)


class _Walk:
    """Directory fds from the root to the parent of a path's last component, and that component."""

    def __init__(self, fds: list[int], names: list[str], last: str | None):
        self.fds, self.names, self.last = fds, names, last

    @property
    def dir_fd(self) -> int:
        return self.fds[-1]

    @property
    def rel(self) -> str:
        return "/".join([*self.names, *([self.last] if self.last else [])])

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class ImageTree:
    """A root tree on the host (flattened image, or a private copy of one) seen from inside."""

    def __init__(self, root: Path | str, label: str = "the image"):
        self.root = Path(root)
        self.label = label

    def __repr__(self) -> str:
        return f"ImageTree({str(self.root)!r})"

    def host_path(self, rel: str = "") -> Path:
        """A host path for handing the tree (or a directory of it) to a tool that never follows symlinks
        (mkfs.ext4 -d, mksquashfs, tar, cp -a). Resolved inside the tree first."""
        canonical = self.resolve(rel, follow=True)
        return self.root / canonical if canonical else self.root

    # --- resolution ----------------------------------------------------------------------------------

    def _walk(self, rel: str, *, follow: bool, create: bool = False) -> _Walk:
        """Resolve rel's parents (and its last component with follow) inside the root.

        create=True makes missing parent directories (0755), as a container engine does for layer members
        whose directories the tar does not list."""
        fds = [os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
        names: list[str] = []
        todo = deque(split(rel))
        hops = 0
        try:
            while todo:
                part = todo.popleft()
                if part == "..":
                    if len(fds) > 1:
                        os.close(fds.pop())
                        names.pop()
                    continue
                last = not todo
                if last and not follow:
                    return _Walk(fds, names, part)
                try:
                    fd = os.open(part, _DIR, dir_fd=fds[-1])
                except FileNotFoundError:
                    if last:
                        return _Walk(fds, names, part)
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fds[-1])
                    fd = os.open(part, _DIR, dir_fd=fds[-1])
                except NotADirectoryError:
                    st = os.stat(part, dir_fd=fds[-1], follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        if last:
                            return _Walk(fds, names, part)
                        raise TreeError(f"{self.label}: '{rel}': '{'/'.join([*names, part])}' is not a "
                                        "directory", hint="fix the path in the image") from None
                    hops += 1
                    if hops > MAX_SYMLINKS:
                        raise TreeError(f"{self.label}: too many symlinks resolving '{rel}'",
                                        hint="the image has a symlink loop; fix it") from None
                    target = os.readlink(part, dir_fd=fds[-1])
                    if target.startswith("/"):
                        while len(fds) > 1:
                            os.close(fds.pop())
                        names.clear()
                    todo.extendleft(reversed(split(target)))
                    continue
                if last:
                    os.close(fd)
                    return _Walk(fds, names, part)
                fds.append(fd)
                names.append(part)
            # the path names a directory reached through `..` (or the root itself)
            if not names:
                return _Walk(fds, names, None)
            os.close(fds.pop())
            return _Walk(fds, names[:-1], names[-1])
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    @contextmanager
    def at(self, rel: str, *, follow: bool = False, create: bool = False) -> Iterator[tuple[int, str | None, str]]:
        """(fd of the parent directory, last name or None for the root, canonical relative path)."""
        walk = self._walk(rel, follow=follow, create=create)
        try:
            yield walk.dir_fd, walk.last, walk.rel
        finally:
            walk.close()

    def open_dir(self, rel: str, *, create: bool = False) -> tuple[int, str]:
        """An O_PATH fd of the directory rel resolves to (made, with its parents, when missing and create),
        and its canonical path. The caller closes the fd."""
        with self.at(rel, follow=True, create=create) as (fd, name, canonical):
            if name is None:
                return os.open(".", _DIR, dir_fd=fd), canonical
            try:
                return os.open(name, _DIR, dir_fd=fd), canonical
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                return os.open(name, _DIR, dir_fd=fd), canonical
            except NotADirectoryError:
                raise TreeError(f"{self.label}: '{rel}' is not a directory", hint="fix the path in the image") from None

    def resolve(self, rel: str, *, follow: bool = False) -> str:
        """rel as a path without symlinks in it (the last component too with follow), '' for the root."""
        try:
            with self.at(rel, follow=follow) as (_fd, _name, canonical):
                return canonical
        except FileNotFoundError:
            return "/".join(split(rel))

    def lstat(self, rel: str, *, follow: bool = False) -> os.stat_result | None:
        try:
            with self.at(rel, follow=follow) as (fd, name, _):
                return os.stat(name or ".", dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError, TreeError):
            return None

    def exists(self, rel: str, *, follow: bool = True) -> bool:
        return self.lstat(rel, follow=follow) is not None

    def is_file(self, rel: str) -> bool:
        st = self.lstat(rel, follow=True)
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_dir(self, rel: str) -> bool:
        st = self.lstat(rel, follow=True)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def is_symlink(self, rel: str) -> bool:
        st = self.lstat(rel)
        return st is not None and stat.S_ISLNK(st.st_mode)

    def readlink(self, rel: str) -> str | None:
        try:
            with self.at(rel) as (fd, name, _):
                return os.readlink(name, dir_fd=fd) if name else None
        except (FileNotFoundError, NotADirectoryError, OSError):
            return None

    @contextmanager
    def _open_dir(self, rel: str) -> Iterator[int | None]:
        """An fd (O_RDONLY) of the directory rel resolves to, or None when it is not a directory."""
        try:
            walk = self._walk(rel, follow=True)
        except (FileNotFoundError, TreeError):
            yield None
            return
        try:
            try:
                fd = os.open(walk.last or ".", _RDIR, dir_fd=walk.dir_fd)
            except (FileNotFoundError, NotADirectoryError, OSError):
                yield None
                return
            try:
                yield fd
            finally:
                os.close(fd)
        finally:
            walk.close()

    def listdir(self, rel: str = "") -> list[str]:
        """Names in a directory of the tree (sorted); [] when it is not a directory."""
        with self._open_dir(rel) as fd:
            return sorted(os.listdir(fd)) if fd is not None else []

    def glob(self, rel_dir: str, pattern: str) -> list[str]:
        """Relative paths of the entries of rel_dir whose names match pattern (sorted)."""
        base = "/".join(split(rel_dir))
        return [f"{base}/{n}" if base else n for n in self.listdir(rel_dir) if fnmatch.fnmatchcase(n, pattern)]

    def expand(self, pattern: str) -> list[str]:
        """Existing paths matching pattern (wildcards in any component), as canonical relative paths."""
        rels = [""]
        for part in split(pattern):
            found: list[str] = []
            for rel in rels:
                if any(ch in part for ch in "*?["):
                    found += self.glob(rel, part)
                else:
                    found.append(f"{rel}/{part}" if rel else part)
            rels = found
        return sorted({self.resolve(rel) for rel in rels if self.exists(rel, follow=False)})

    # --- reading -------------------------------------------------------------------------------------

    @contextmanager
    def _open_file(self, rel: str) -> Iterator[int]:
        """A read fd of the regular file rel resolves to. Opened as O_PATH first and checked, so a device
        node or fifo in the tree is never opened for reading."""
        with self.at(rel, follow=True) as (fd, name, canonical):
            if name is None:
                raise IsADirectoryError(rel)
            path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            mode = os.fstat(path_fd).st_mode
            if not stat.S_ISREG(mode):
                if stat.S_ISDIR(mode):
                    raise IsADirectoryError(rel)
                raise TreeError(f"{self.label}: /{canonical} is not a regular file",
                                hint="openos365 only reads regular files from an image; fix the image")
            read_fd = os.open(proc_path(path_fd), os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(path_fd)
        try:
            yield read_fd
        finally:
            os.close(read_fd)

    @contextmanager
    def open(self, rel: str) -> Iterator[IO[bytes]]:
        """A regular file of the tree, opened for streaming (no size cap: for blobs and kernels)."""
        with self._open_file(rel) as fd, os.fdopen(os.dup(fd), "rb") as fh:
            yield fh

    def size(self, rel: str) -> int:
        with self._open_file(rel) as fd:
            return os.fstat(fd).st_size

    def read_bytes(self, rel: str, *, limit: int = MAX_READ) -> bytes:
        with self._open_file(rel) as fd:
            size = os.fstat(fd).st_size
            if size > limit:
                raise TreeError(f"{self.label}: /{rel} is {size} bytes, more than openos365 reads ({limit})",
                                hint="the file is not what it should be; fix the image")
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read(limit + 1)
        if len(data) > limit:
            raise TreeError(f"{self.label}: /{rel} is larger than openos365 reads ({limit} bytes)")
        return data

    def read_text(self, rel: str, *, limit: int = MAX_READ, missing: str | None = "") -> str:
        """The file's text (undecodable bytes replaced); `missing` when it does not exist (None: raise)."""
        try:
            return self.read_bytes(rel, limit=limit).decode(errors="replace")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if missing is None:
                raise
            return missing

    def head(self, rel: str, size: int) -> bytes:
        """The first bytes of a regular file; b'' when it is missing or not a regular file."""
        try:
            with self._open_file(rel) as fd:
                return os.pread(fd, size, 0)
        except (OSError, TreeError):
            return b""

    def copy_out(self, rel: str, dest: Path) -> Path:
        """Copy a regular file of the tree to a host path (created new)."""
        with self.open(rel) as src, open(dest, "xb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        return dest

    def copy_dir_out(self, rel: str, dest: Path) -> Path:
        """Copy the regular files of a directory of the tree (not its subdirectories) to a new host directory."""
        dest.mkdir(parents=True)
        for name in self.listdir(rel):
            if self.is_file(f"{rel}/{name}"):
                self.copy_out(f"{rel}/{name}", dest / name)
        return dest

    # --- writing -------------------------------------------------------------------------------------

    def _remove_at(self, fd: int, name: str) -> bool:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=fd)   # fd-based: never follows a symlink
        else:
            os.unlink(name, dir_fd=fd)
        return True

    def remove(self, rel: str) -> bool:
        """Remove an entry (a directory with everything in it; a symlink itself). True when it existed."""
        try:
            with self.at(rel) as (fd, name, _):
                if name is None:
                    raise TreeError(f"{self.label}: refusing to remove the root of the tree")
                return self._remove_at(fd, name)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def remove_matching(self, *patterns: str) -> list[str]:
        """Remove every entry matching the patterns (wildcards in any component); returns what went."""
        removed = []
        for pattern in patterns:
            for rel in self.expand(pattern):
                if self.remove(rel):
                    removed.append(rel)
        return removed

    def write(self, rel: str, content: str | bytes, mode: int = 0o644, *, owner: tuple[int, int] = (0, 0),
              mtime: int | None = None) -> str:
        """Replace rel with a new regular file (a temp file renamed over the old entry, so neither a symlink
        nor a hard-linked inode is written through). Returns the canonical path."""
        data = content.encode() if isinstance(content, str) else content
        with self.at(rel, create=True) as (fd, name, canonical):
            if name is None:
                raise TreeError(f"{self.label}: cannot write the root of the tree")
            existing = lstat_at(fd, name)
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                shutil.rmtree(name, dir_fd=fd)
            temp = f".{name}.openos365-{os.getpid()}"
            self._remove_at(fd, temp)
            out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=fd)
            try:
                with os.fdopen(out, "wb", closefd=False) as fh:
                    fh.write(data)
                self.set_metadata(out, mode, owner, mtime)
            finally:
                os.close(out)
            os.rename(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
        return canonical

    @staticmethod
    def set_metadata(fd: int, mode: int, owner: tuple[int, int] | None, mtime: int | None) -> None:
        """Owner (as root), then mode (chown clears setuid bits), then times, all on an open fd."""
        if owner is not None and is_root():
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        if mtime is not None:
            os.utime(fd, (mtime, mtime))

    def append(self, rel: str, line: str, mode: int, *, owner: tuple[int, int] = (0, 0),
               mtime: int | None = None) -> None:
        content = self.read_text(rel)
        if content and not content.endswith("\n"):
            content += "\n"
        self.write(rel, content + line, mode, owner=owner, mtime=mtime)

    def symlink(self, rel: str, target: str) -> None:
        """Make rel a symlink to target (replacing what was there)."""
        with self.at(rel, create=True) as (fd, name, _):
            if name is None:
                raise TreeError(f"{self.label}: cannot replace the root of the tree")
            self._remove_at(fd, name)
            os.symlink(target, name, dir_fd=fd)

    def mkdir(self, rel: str, mode: int = 0o755, *, owner: tuple[int, int] | None = None,
              mtime: int | None = None) -> str:
        """Make rel a directory (parents too), replacing a symlink or file there; set mode and owner."""
        with self.at(rel, create=True) as (fd, name, canonical):
            if name is None:
                return canonical
            dir_fd = ensure_dir_at(fd, name)
            try:
                self.set_metadata(dir_fd, mode, owner, mtime)
            finally:
                os.close(dir_fd)
        return canonical

    def copy_in(self, source: Path, rel: str, mode: int = 0o644, *, mtime: int | None = None) -> None:
        """Copy a host file into the tree (replacing what was there), root-owned."""
        self.write(rel, source.read_bytes(), mode, mtime=mtime)

    def copy_dir_in(self, source: Path, rel: str, *, mtime: int | None = None) -> None:
        """Copy the regular files of a host directory into a directory of the tree."""
        self.mkdir(rel, mtime=mtime)
        for entry in sorted(source.iterdir()):
            if entry.is_file():
                self.copy_in(entry, f"{rel}/{entry.name}", stat.S_IMODE(entry.stat().st_mode), mtime=mtime)

    # --- walking -------------------------------------------------------------------------------------

    def walk(self) -> Iterator[tuple[str, list[str], list[str], int]]:
        """(relative dir, subdirectory names, other names, dir fd) for every directory, top down, like
        os.walk: removing names from the subdirectory list prunes them. Unlike os.fwalk it never stats
        through a symlink (a host path), and it holds one fd per level, with no recursion limit."""
        stack: list[tuple[int, str, Iterator[str]]] = []
        fd, rel = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), ""
        try:
            while True:
                dirs, others = _scan(fd)
                yield rel, dirs, others, fd
                stack.append((fd, rel, iter(list(dirs))))
                while stack:
                    parent_fd, parent_rel, names = stack[-1]
                    name = next(names, None)
                    if name is None:
                        os.close(stack.pop()[0])
                        continue
                    try:
                        fd = os.open(name, _RDIR, dir_fd=parent_fd)
                    except OSError:
                        continue
                    rel = f"{parent_rel}/{name}" if parent_rel else name
                    break
                else:
                    return
        finally:
            for open_fd, _, _ in stack:
                os.close(open_fd)


def _scan(fd: int) -> tuple[list[str], list[str]]:
    dirs, others = [], []
    with os.scandir(fd) as entries:
        for entry in entries:
            (dirs if entry.is_dir(follow_symlinks=False) else others).append(entry.name)
    return sorted(dirs), sorted(others)
