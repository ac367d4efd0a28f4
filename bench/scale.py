"""How export time and memory grow with the image: layers/server plus 0, 1, 2 and 4 GiB of extra files.

    python bench/scale.py [--sizes 0,1,2,4]

For each size, a layer on top of layers/server copies that much incompressible data (64 MiB files) into
/srv/extra and is built; then, with no flattened tree or artifact cached, `export --to qcow2` is timed
with its peak resident memory (the largest of openos365 and the tools it runs), beside the floor for the
same image: podman export | tar -x, mkfs.ext4 -d, qemu-img convert. Time should grow with size at about
the floor's slope; memory should not grow. Each size's image, trees and artifacts are removed before the
next (the 4 GiB row needs ~16 GiB free).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from common import CLI, REPO, cleanup, plain_flatten, scratch, sh

CHUNK = 64 << 20
SERVER = "localhost/openos365/server:latest"
LAYER = "ARG PARENT\nFROM ${PARENT}\nCOPY extra/ /srv/extra/\n"


def make_layer(work: Path, gib: int) -> Path:
    layer = work / "layers" / f"scale-{gib}g"
    extra = layer / "extra"
    extra.mkdir(parents=True)
    (extra / ".keep").write_text("")
    for index in range(gib * (1 << 30) // CHUNK):
        (extra / f"blob-{index:03d}").write_bytes(os.urandom(CHUNK))
    (layer / "layer.yaml").write_text(f"from: {SERVER}\nimage: localhost/openos365-bench/scale-{gib}g\n"
                                      "export:\n  firmware: both\n  hostname: server\n")
    (layer / "Containerfile").write_text(LAYER)
    return layer


def measured(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of a command and every process it waited for."""
    os.sync()    # the layer just built is still being written back: neither side should pay for it
    start = time.monotonic()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], cwd=REPO, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return seconds, int(result.stderr.strip().splitlines()[-1]) // 1024


def floor(ref: str, work: Path) -> float:
    tree, image = work / "plain", work / "floor.ext4"
    os.sync()
    start = time.monotonic()
    plain_flatten(ref, tree)
    blocks = (int(sh("du", "-sk", str(tree)).split()[0]) * 13 // 10 + 262144) // 4
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(tree), str(image), str(blocks))
    sh("qemu-img", "convert", "-O", "qcow2", str(image), str(work / "floor.qcow2"))
    return time.monotonic() - start


def row(work: Path, gib: int) -> tuple[float, int, float]:
    sh(*CLI, "build", "layers/server")
    layer = make_layer(work, gib) if gib else REPO / "layers/server"
    # built with the export's workdir, as a user's loop does: the export then finds the build's record
    # and does not hand the (large) build context to the engine again
    sh(*CLI, "--workdir", str(work / "wd"), "build", str(layer))
    ref = f"localhost/openos365-bench/scale-{gib}g:latest" if gib else SERVER
    try:
        seconds, peak = measured([*CLI, "--workdir", str(work / "wd"), "export", "--to", "qcow2", str(layer),
                                  "-o", str(work / "out"), "--compression", "none"])
        for path in ("wd", "out", "layers"):    # room for the floor's own copies (the 4 GiB row needs it)
            cleanup(work / path)
        return seconds, peak, floor(ref, work)
    finally:
        for path in ("wd", "out", "plain", "floor.ext4", "floor.qcow2", "layers"):
            cleanup(work / path)
        if gib:   # by id: openos365 also tagged it with its id
            image_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref],
                                      capture_output=True, text=True).stdout.strip()
            subprocess.run(["podman", "rmi", "--force", image_id or ref], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0,1,2,4", help="extra GiB per row, comma-separated")
    args = parser.parse_args()
    work = scratch()
    print("bench/scale.py: layers/server + N GiB of extra files -> qcow2 (--compression none), no tree cached")
    print(f"  {'extra':>6} {'export s':>9} {'peak MiB':>9} {'floor s':>8} {'export/floor':>13}")
    rows = []
    try:
        for gib in (int(size) for size in args.sizes.split(",")):
            seconds, peak, floor_seconds = row(work, gib)
            rows.append((gib, seconds, floor_seconds))
            print(f"  {gib:>4} G {seconds:9.1f} {peak:9d} {floor_seconds:8.1f} {seconds / floor_seconds:12.2f}x",
                  flush=True)
        if len(rows) > 1 and rows[-1][0] > rows[0][0]:
            (g0, t0, f0), (g1, t1, f1) = rows[0], rows[-1]
            print(f"  slope: ours {(t1 - t0) / (g1 - g0):.1f} s/GiB, floor {(f1 - f0) / (g1 - g0):.1f} s/GiB, "
                  f"ratio {(t1 - t0) / (f1 - f0):.2f}x")
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
