"""Rootless exports: the steps that read or write image content run as root inside a user namespace.

A normal user cannot give files other owners, so a tree flattened as that user, and every filesystem made
from it, would say the user owns /usr/bin/sudo. Instead, `openos365 export` (and `inspect`) started by a
normal user runs itself again inside the engine's user namespace (`podman unshare`, as buildah and podman
users know it): uid 0 there is the user, uids 1-65536 are the user's /etc/subuid range, so chown works,
the image's own owners are kept, and mkfs.ext4 -d, mksquashfs and tar record them as the image says.
Device nodes cannot be made there; the bootable formats leave them out in every mode (devtmpfs provides
/dev), so a rootless export gives the same bytes as one made as root.
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from . import log
from .errors import UserError
from .runner import run, which

MARKER = "OPENOS365_IN_USERNS"
NEEDED_IDS = 65536            # a Debian or Fedora image uses ids up to 65534 (nobody)
COMMANDS = ("export", "inspect")
SUBID_FILES = ("/etc/subuid", "/etc/subgid")


def uid_map(path: str = "/proc/self/uid_map") -> list[tuple[int, int, int]]:
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in text.splitlines() if line.strip())]


def in_user_namespace() -> bool:
    """True inside a user namespace other than the host's (whose map is `0 0 4294967295`)."""
    return uid_map() not in ([], [(0, 0, 4294967295)])


def mode() -> str:
    """How trees are made here: 'root' (host root), 'userns' (root in a user namespace) or 'user'."""
    if os.geteuid() != 0:
        return "user"
    return "userns" if in_user_namespace() else "root"


def wants_userns(argv: list[str]) -> bool:
    """A command that touches image content, started by a normal user outside any user namespace."""
    return (os.geteuid() != 0 and command_of(argv) in COMMANDS and not os.environ.get(MARKER)
            and not in_user_namespace())


def command_of(argv: list[str]) -> str | None:
    """The subcommand: the first word that is neither a global option nor the value of `--workdir`."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workdir":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


@dataclass(frozen=True)
class Readiness:
    engine: str | None          # the engine whose `unshare` is used; None when rootless cannot work here
    problem: str = ""
    hint: str = ""


def _subordinate(path: str, user: str, uid: int) -> int:
    """How many subordinate ids /etc/subuid (or subgid) gives this user."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return 0
    total = 0
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)) and parts[2].isdigit():
            total += int(parts[2])
    return total


def readiness() -> Readiness:
    """Whether this user can run exports in a user namespace, and what to do when not."""
    user, uid = getpass.getuser(), os.getuid()
    engine = next((e for e in ("podman", "buildah") if which(e)), None)
    if engine is None:
        return Readiness(None, "a rootless export needs podman or buildah (their `unshare`)",
                         "install podman: apt-get install podman uidmap (Fedora: dnf install podman)")
    try:
        enabled = int(Path("/proc/sys/user/max_user_namespaces").read_text()) > 0
        clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
        enabled = enabled and (not clone.exists() or clone.read_text().strip() == "1")
    except (OSError, ValueError):
        enabled = False
    if not enabled:
        return Readiness(None, "user namespaces are disabled on this host",
                         "as root: sysctl -w user.max_user_namespaces=15000 (and on Debian with an older kernel "
                         "kernel.unprivileged_userns_clone=1)")
    if not (which("newuidmap") and which("newgidmap")):
        return Readiness(None, "newuidmap and newgidmap are not installed",
                         "as root: apt-get install uidmap (Fedora: dnf install shadow-utils)")
    for path in SUBID_FILES:
        if _subordinate(path, user, uid) < NEEDED_IDS:
            return Readiness(None, f"{path} gives {user} fewer than {NEEDED_IDS} subordinate ids",
                             f"as root, once: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "
                             f"{user} (then: podman system migrate)")
    return Readiness(engine)


def reexec(argv: list[str]) -> int:
    """Run this openos365 command again as root in the engine's user namespace; its exit status."""
    ready = readiness()
    if ready.engine is None:
        raise UserError(f"openos365 {argv[0] if argv else ''} as {getpass.getuser()}: {ready.problem}; the image's "
                        "owners (root-owned setuid files) cannot be kept without it", hint=ready.hint)
    log.note(f"running in {ready.engine}'s user namespace, so the image's owners are kept")
    result = run([ready.engine, "unshare", "--", sys.executable, "-m", "openos365.cli", *argv],
                 env={MARKER: "1"}, check=False, passthrough=True)
    return result.returncode
