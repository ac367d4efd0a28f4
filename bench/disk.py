"""Export times of layers/server to raw and qcow2, as ratios to the floor; the qcow2 size and time with the
default zstd compression against --compression none.

The floor is the least any tool must do on this machine: flatten (podman export | tar -x),
mkfs.ext4 -d of the tree into a file, and qemu-img convert of that file to qcow2.
"""

from __future__ import annotations

from pathlib import Path

from common import REPO, cleanup, openos365, plain_flatten, ratio, scratch, sh, timed

REF = "localhost/openos365/server:latest"


def floor(work: Path) -> tuple[float, float]:
    tree = work / "plain"
    t_flatten = timed("floor: podman export | tar -x", lambda: plain_flatten(REF, tree))
    size_kib = int(sh("du", "-sk", str(tree)).split()[0])
    blocks = (size_kib * 13 // 10 + 262144) // 4
    image = work / "floor.ext4"
    t_mkfs = timed("floor: mkfs.ext4 -d", lambda: sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(tree),
                                                    str(image), str(blocks)))
    t_convert = timed("floor: qemu-img convert -O qcow2", lambda: sh("qemu-img", "convert", "-O", "qcow2",
                                                                    str(image), str(work / "floor.qcow2")))
    return t_flatten + t_mkfs, t_flatten + t_mkfs + t_convert


def main() -> None:
    work = scratch()
    print(f"bench/disk.py on {REPO}")
    try:
        openos365("build", "layers/server")
        raw = timed("openos365 export --to raw (empty tree cache)", lambda: openos365(
            "export", "--to", "raw", "layers/server", "-o", str(work / "out"), workdir=work / "wd1"))
        qcow2 = timed("openos365 export --to qcow2 --compression none (empty tree cache)", lambda: openos365(
            "export", "--to", "qcow2", "layers/server", "-o", str(work / "out"), "--compression", "none",
            workdir=work / "wd2"))   # like the floor's convert; the zstd default is smaller and slower
        plain_size = (work / "out/server.qcow2").stat().st_size
        zstd = timed("openos365 export --to qcow2 (default: zstd; empty tree cache)", lambda: openos365(
            "export", "--to", "qcow2", "layers/server", "-o", str(work / "zstd"), workdir=work / "wd3"))
        zstd_size = (work / "zstd/server.qcow2").stat().st_size
        floor_raw, floor_qcow2 = floor(work)
        ratio("raw export / floor (flatten + mkfs)", raw, floor_raw)
        ratio("qcow2 export / floor (flatten + mkfs + convert)", qcow2, floor_qcow2)
        ratio("qcow2 export, zstd / --compression none", zstd, qcow2)
        print(f"  {'server.qcow2 size, --compression none':<52} {plain_size / 2**20:8.0f} MiB")
        print(f"  {'server.qcow2 size, zstd (the default)':<52} {zstd_size / 2**20:8.0f} MiB")
        print(f"  {'zstd size / uncompressed size':<52} {zstd_size / plain_size:8.2f} x")
        floor_size = (work / "floor.qcow2").stat().st_size
        print(f"  {'uncompressed size / floor qcow2 size':<52} {plain_size / floor_size:8.2f} x")
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
