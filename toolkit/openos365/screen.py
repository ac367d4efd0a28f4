"""`openos365 test --screenshot FILE.png`: what the VM's screen shows once the system is up.

The VM gets a screen (qemu's standard VGA: the firmware and the console draw on it, and in the guest
bochs-drm drives it, which Xorg's modesetting driver uses) and a QMP socket in the boot's scratch
directory. The guest is asked to stay up after its report (the fw_cfg entry the boot check looks for),
so the harness can take qemu's `screendump` of the settled screen, then power the machine down itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import time
from pathlib import Path

from . import log
from .artifacts import atomic_path
from .errors import BootTestError, UserError

SOCKET = "qmp.sock"
HOLD = "name=opt/org.openos365.hold,string=1"   # the boot check stays up after reporting when it sees this
SOCKET_PATH_MAX = 107                           # sun_path is 108 bytes, with its NUL
SETTLE_SECONDS = 60      # how long to wait for the screen to stop changing after the report
INTERVAL = 2.0           # seconds between two screendumps
STABLE_SHOTS = 3         # this many equal screendumps in a row: the screen has settled
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def destination(path: Path) -> Path:
    """Where the screenshot goes, checked before any boot: a .png in a directory that exists."""
    path = path.expanduser()
    if path.suffix.lower() != ".png":
        raise UserError(f"--screenshot {path}: the screenshot is a PNG file", hint="name it like screen.png")
    if path.is_dir():
        raise UserError(f"--screenshot {path}: is a directory", hint="give a file name, e.g. screen.png")
    parent = path.parent.resolve()
    if not parent.is_dir():
        raise UserError(f"--screenshot {path}: directory {parent} does not exist",
                        hint=f"create it first (mkdir -p {parent}) or name a file in an existing directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--screenshot {path}: directory {parent} is not writable",
                        hint="name a file in a directory you can write")
    return parent / path.name


def qemu_args(work: Path) -> list[str]:
    """A screen, a QMP socket, and the request to stay up after the report."""
    socket = work / SOCKET
    if len(os.fsencode(socket)) > SOCKET_PATH_MAX:
        raise UserError(f"--screenshot: the monitor socket path {socket} is longer than a Unix socket allows "
                        f"({SOCKET_PATH_MAX} bytes)", hint="use a shorter --workdir (e.g. --workdir /var/tmp/oos)")
    return ["-device", "VGA", "-qmp", f"unix:{socket},server=on,wait=off", "-fw_cfg", HOLD]


def capture(work: Path, dest: Path) -> tuple[int, int]:
    """Take the settled screen into `dest` (atomically), then ask the guest to power off; the picture's size."""
    from qemu.qmp import QMPClient, QMPError

    async def session() -> Path:
        qmp = QMPClient("openos365")
        await qmp.connect(str(work / SOCKET))
        try:
            shot = await settled_screen(qmp, work)
            await qmp.execute("system_powerdown")
            return shot
        finally:
            await qmp.disconnect()

    try:
        shot = asyncio.run(session())
    except (QMPError, OSError) as exc:
        raise BootTestError(f"--screenshot: qemu's monitor did not give the screen: {exc}",
                            hint="run again with --verbose; qemu must be 7.1 or newer for PNG screendumps") from exc
    with atomic_path(dest) as temp:
        shutil.copyfile(shot, temp)
    return png_size(dest)


async def settled_screen(qmp, work: Path, *, settle: float = SETTLE_SECONDS, interval: float = INTERVAL) -> Path:
    """Screendumps every `interval` seconds until STABLE_SHOTS in a row are equal (a greeter still drawing,
    a blinking cursor that stops after a while) or `settle` seconds have passed; the last one."""
    started = time.monotonic()
    shots: list[bytes] = []
    number = 0
    while True:
        shot = work / f"screen-{number % 2}.png"
        await qmp.execute("screendump", {"filename": str(shot), "format": "png"})
        shots = [*shots[-(STABLE_SHOTS - 1):], shot.read_bytes()]
        if len(shots) == STABLE_SHOTS and len(set(shots)) == 1:
            return shot
        if time.monotonic() - started > settle:
            log.note(f"the screen was still changing after {settle:.0f}s: the screenshot is its last state")
            return shot
        number += 1
        await asyncio.sleep(interval)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header (IHDR comes first)."""
    head = path.read_bytes()[:24]
    if not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise BootTestError(f"{path}: qemu's screendump is not a PNG", hint="qemu must be 7.1 or newer")
    width, height = struct.unpack(">II", head[16:24])
    return width, height
