"""openos365 test --screenshot: qemu's extra arguments, the destination checks and the settling of the screen."""

import asyncio
import struct
import zlib

import pytest

from openos365 import log, qemu, screen
from openos365.errors import BootTestError, UserError
from tests.conftest import cli


def png(width: int, height: int, colour: bytes = b"\x00\x00\x00") -> bytes:
    """A real (tiny) PNG: signature, IHDR, one IDAT of RGB rows, IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + colour * width for _ in range(height))
    return (screen.PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def iso_request(tmp_path, **kwargs) -> qemu.BootRequest:
    artifact = tmp_path / "desktop.iso"
    artifact.write_bytes(b"\0" * 2048)
    return qemu.BootRequest(artifact=artifact, workdir=tmp_path, **kwargs)


def test_no_screenshot_leaves_the_command_line_as_it_was(tmp_path):
    argv, mode = qemu.qemu_argv(iso_request(tmp_path), tmp_path, "tcg")
    assert mode == "iso-cdrom"
    assert "-qmp" not in argv and "-fw_cfg" not in argv and "VGA" not in argv
    assert argv[argv.index("-display") + 1] == "none" and "-nodefaults" in argv


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_screenshot_adds_a_screen_a_monitor_and_the_hold(tmp_path, firmware):
    req = iso_request(tmp_path, firmware=firmware, screenshot=tmp_path / "s.png")
    argv, _ = qemu.qemu_argv(req, tmp_path, "tcg")
    assert argv[argv.index("-device", argv.index("-nodefaults")):].count("VGA") == 1
    assert argv[argv.index("-qmp") + 1] == f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off"
    assert argv[argv.index("-fw_cfg") + 1] == "name=opt/org.openos365.hold,string=1"
    assert "-device" in argv and argv[argv.index("VGA") - 1] == "-device"


def test_screenshot_for_a_kis_boot(tmp_path):
    for name, text in (("s.append", "root=live:x console=ttyS0"), ("s.kernel", "k"), ("s.initrd", "i"),
                       ("s.squashfs", "r")):
        (tmp_path / name).write_text(text)
    req = qemu.BootRequest(artifact=tmp_path, workdir=tmp_path, screenshot=tmp_path / "s.png")
    argv, mode = qemu.qemu_argv(req, tmp_path, "tcg")
    assert mode == "kis" and "-qmp" in argv and "VGA" in argv


def test_monitor_socket_path_too_long(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with pytest.raises(UserError, match="longer than a Unix socket allows") as err:
        screen.qemu_args(deep)
    assert "--workdir" in err.value.hint


def test_destination_must_be_a_png_in_an_existing_directory(tmp_path):
    assert screen.destination(tmp_path / "s.png") == tmp_path / "s.png"
    with pytest.raises(UserError, match="does not exist") as err:
        screen.destination(tmp_path / "missing" / "s.png")
    assert "mkdir -p" in err.value.hint
    with pytest.raises(UserError, match="is a PNG file"):
        screen.destination(tmp_path / "s.ppm")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        screen.destination(tmp_path / "d.png")


def test_cli_refuses_a_missing_directory_before_booting(tmp_path):
    result = cli("test", str(tmp_path / "nothing.iso"), "--screenshot", str(tmp_path / "no" / "s.png"),
                 check=False)
    assert result.returncode == 2, result.stderr
    assert "--screenshot" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


class FakeMonitor:
    """Answers screendump by writing the next of `screens` (the last one repeats)."""

    def __init__(self, screens: list[bytes]):
        self.screens = screens
        self.commands: list[tuple[str, dict]] = []

    async def execute(self, command: str, arguments: dict | None = None) -> dict:
        self.commands.append((command, arguments or {}))
        if command == "screendump":
            taken = sum(1 for c, _ in self.commands if c == "screendump")
            with open(arguments["filename"], "wb") as file:
                file.write(self.screens[min(taken, len(self.screens)) - 1])
        return {}


def test_screen_is_taken_once_it_stops_changing(tmp_path):
    console, greeter = png(4, 3, b"\x00\x00\x00"), png(4, 3, b"\x20\x40\x80")
    monitor = FakeMonitor([console, console, greeter, console, greeter, greeter, greeter])
    shot = asyncio.run(screen.settled_screen(monitor, tmp_path, interval=0))
    assert shot.read_bytes() == greeter
    assert [c for c, _ in monitor.commands] == ["screendump"] * 7
    assert all(a["format"] == "png" and a["filename"].startswith(str(tmp_path)) for _, a in monitor.commands)


def test_a_screen_that_never_settles_gives_its_last_state(tmp_path, monkeypatch):
    notes = []
    monkeypatch.setattr(log, "note", notes.append)
    frames = [png(2, 2, bytes([n, 0, 0])) for n in range(50)]
    shot = asyncio.run(screen.settled_screen(FakeMonitor(frames), tmp_path, settle=0.05, interval=0.01))
    assert shot.read_bytes() in frames
    assert any("still changing" in note for note in notes)


def test_png_size_reads_the_header(tmp_path):
    (tmp_path / "s.png").write_bytes(png(640, 480))
    assert screen.png_size(tmp_path / "s.png") == (640, 480)
    (tmp_path / "bad.png").write_bytes(b"P6\n640 480\n255\n")
    with pytest.raises(BootTestError, match="not a PNG"):
        screen.png_size(tmp_path / "bad.png")
