"""ISO export time as a ratio to mksquashfs + xorriso alone on the same tree, ISO sizes for zstd and xz, and
the install ISO's export time and size against the live ISO's (both from the cached tree)."""

from __future__ import annotations

from pathlib import Path

from common import REPO, cleanup, openos365, plain_flatten, ratio, scratch, sh, timed

REF = "localhost/openos365/server:latest"


def floor(work: Path) -> float:
    tree = work / "plain"
    t_flatten = timed("floor: podman export | tar -x", lambda: plain_flatten(REF, tree))
    stage = work / "stage"
    (stage / "live").mkdir(parents=True)
    t_squash = timed("floor: mksquashfs -comp zstd -Xcompression-level 9", lambda: sh(
        "mksquashfs", str(tree), str(stage / "live/filesystem.squashfs"), "-comp", "zstd", "-Xcompression-level",
        "9", "-noappend", "-quiet"))
    t_iso = timed("floor: xorriso -as mkisofs", lambda: sh(
        "xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "FLOOR", "-o", str(work / "floor.iso"), str(stage)))
    return t_flatten + t_squash + t_iso


def main() -> None:
    work = scratch()
    print(f"bench/iso.py on {REPO}")
    try:
        openos365("build", "layers/server")
        iso = timed("openos365 export --to iso (zstd, empty tree cache)", lambda: openos365(
            "export", "--to", "iso", "layers/server", "-o", str(work / "zstd"), workdir=work / "wd1"))
        timed("openos365 export --to iso --compression xz (cached tree)", lambda: openos365(
            "export", "--to", "iso", "layers/server", "--compression", "xz", "-o", str(work / "xz"),
            workdir=work / "wd1"))
        live = timed("openos365 export --to iso --no-cache (cached tree)", lambda: openos365(
            "export", "--to", "iso", "layers/server", "-o", str(work / "live"), "--no-cache", workdir=work / "wd1"))
        install = timed("openos365 export --to install-iso (cached tree)", lambda: openos365(
            "export", "--to", "install-iso", "layers/server", "-o", str(work / "install"), workdir=work / "wd1"))
        ratio("iso export / floor (flatten + mksquashfs + xorriso)", iso, floor(work))
        for label in ("zstd", "xz"):
            size = (work / label / "server.iso").stat().st_size
            print(f"  {'server.iso size, ' + label:<52} {size / 2**20:8.0f} MiB")
        ratio("install-iso export / iso export", install, live)
        install_size = (work / "install/server.install.iso").stat().st_size
        live_size = (work / "live/server.iso").stat().st_size
        print(f"  {'server.install.iso size':<52} {install_size / 2**20:8.0f} MiB")
        print(f"  {'install-iso size / iso size':<52} {install_size / live_size:8.2f} x")
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
