"""layers/desktop boots to the graphical login, and `openos365 test --screenshot` shows it.

The live ISO boots under UEFI, the qcow2 under BIOS, each with --screenshot: the boot check reports
LightDM active with Xorg and its greeter up (and drawn), NetworkManager instead of systemd-networkd, and the
screenshot is a real picture of the login screen, not a blank or text screen. Slow (the desktop layer's
build the first time, a 450 MiB ISO, two boots of a few minutes each under TCG): marked `desktop` too,
so `-m "not desktop"` leaves them out; CI runs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openos365.qemu import BootRequest, boot_test
from tests.conftest import REPO, cli

pytestmark = [pytest.mark.boot, pytest.mark.desktop]
MANY_COLOURS = 256       # a text console or a blank screen has a handful; the greeter's backdrop thousands


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """layers/desktop (with base and server below it) built and exported once as a live ISO and a qcow2."""
    out = tmp_path_factory.mktemp("desktop")
    cli("export", "--to", "iso,qcow2", "layers/desktop", "-o", str(out))
    return out


def picture(path: Path):  # a PIL.Image.Image
    """The PNG decoded by Pillow (a dev dependency: pip install -e '.[dev]'), not by our own code."""
    from PIL import Image

    return Image.open(path)


def boot_to_login(artifact: Path, screenshot: Path, firmware: str) -> dict[str, str]:
    report = boot_test(BootRequest(artifact=artifact, firmware=firmware, workdir=REPO / ".openos365", timeout=1200,
                                   memory="2G", screenshot=screenshot))
    fields = report.fields
    assert fields["state"] == "running" and fields["failed"] == "", fields
    assert fields["hostname"] == "desktop"
    assert fields["default_target"] == "graphical.target"
    assert fields["display_manager"] == "active" and fields["display_manager_unit"] == "lightdm.service", fields
    assert fields["x_server"] == "running" and fields["greeter"] == "running", fields
    assert fields["greeter_settled"] == "yes", fields
    # NetworkManager does DHCP (nm-applet is its UI); networkd, the server layer's, is off
    assert fields["network_manager"] == "active" and fields["networkd"] == "inactive", fields
    assert report.screen == picture(screenshot).size
    return fields


def assert_login_screen(path: Path) -> None:
    """A real picture: the screen's size, many colours, no colour covering nearly all of it (a blank screen)."""
    image = picture(path).convert("RGB")
    width, height = image.size
    assert width >= 800 and height >= 600, image.size
    colours = image.getcolors(maxcolors=width * height)
    assert len(colours) >= MANY_COLOURS, f"{path}: only {len(colours)} colours: a blank or text screen"
    commonest = max(count for count, _ in colours)
    assert commonest < 0.9 * width * height, f"{path}: one colour covers {commonest / (width * height):.0%}"


def test_the_polkit_agent_is_the_chosen_one(desktop):
    """One GTK agent that xfce autostarts, not whichever provider of polkit-1-auth-agent apt picks (on
    Debian 13 ukui-polkit, with Qt 5, OpenCV and GDAL)."""
    packages = json.loads((desktop / "manifest.json").read_text())["artifacts"]["desktop.qcow2"]["packages"]
    names = {p.partition("=")[0] for p in packages}
    assert "mate-polkit" in names and not names & {"ukui-polkit", "libopencv-core410", "libgdal36"}


def test_live_iso_boots_to_the_login_screen_under_uefi(desktop, tmp_path):
    screenshot = tmp_path / "desktop-iso.png"
    fields = boot_to_login(desktop / "desktop.iso", screenshot, "uefi")
    assert fields["root_fstype"] == "overlay"   # the live system: squashfs under a RAM overlay
    assert_login_screen(screenshot)


def test_qcow2_boots_to_the_login_screen_under_bios(desktop, tmp_path):
    screenshot = tmp_path / "desktop-qcow2.png"
    fields = boot_to_login(desktop / "desktop.qcow2", screenshot, "bios")
    assert fields["root_fstype"] == "ext4"
    assert_login_screen(screenshot)
