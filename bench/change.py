"""The developer's loop on layers/server -> qcow2: first export, a one-line change, the same export again.

    python bench/change.py [--compression none|zstd]

Rows (each with an empty openos365 workdir at the start, the engine's layer cache warm):
  first export      build (cache hits) + flatten + disk
  one-line change   a file in the top layer changes: rebuild from that step, flatten, disk
  export again      nothing changed: no build, no flatten, the earlier artifact reused after its checksum
The peers' figures for the same loop on this kind of machine are in ../shared/peers/README.md (mkosi's
incremental rebuild after a one-line change: 59.2 s); this prints ours and the ratio to that figure.
"""

from __future__ import annotations

import argparse
import shutil

from common import REPO, cleanup, openos365, scratch, timed

MKOSI_CHANGE_SECONDS = 59.2   # ../shared/peers/README.md, measured on this kind of machine


def developer_loop(compression: str | None) -> tuple[float, float, float]:
    """(first export, one-line change, export again) seconds, each printed as it is measured."""
    work = scratch()
    project = work / "project"
    shutil.copytree(REPO / "layers", project / "layers")
    shutil.copytree(REPO / "Containerfiles", project / "Containerfiles")
    layer_yaml = project / "layers/server/layer.yaml"    # its own image name: the bench never retags ours
    layer_yaml.write_text(layer_yaml.read_text().replace("openos365/server", "openos365-bench/server"))
    motd = project / "layers/server/files/motd"
    containerfile = project / "layers/server/Containerfile"
    containerfile.write_text(containerfile.read_text().replace(
        "LABEL org.opencontainers.image.title", "COPY files/motd /etc/motd\nLABEL org.opencontainers.image.title"))
    extra = ["--compression", compression] if compression else []

    def export(out: str) -> object:
        return openos365("export", "--to", "qcow2", str(project / "layers/server"), "-o", str(work / out), *extra,
                         workdir=work / "wd")

    try:
        motd.write_text("first\n")
        first = timed("first export (empty workdir)", lambda: export("1"))
        motd.write_text("second\n")
        change = timed("one-line change in the top layer -> new qcow2", lambda: export("2"))
        again = timed("same image, same options, export again", lambda: export("3"))
        return first, change, again
    finally:
        cleanup(work)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compression", default=None, help="qcow2 compression (default: the exporter's)")
    args = parser.parse_args()
    print(f"bench/change.py: layers/server -> qcow2 {args.compression or ''}".rstrip())
    _first, change, again = developer_loop(args.compression)
    print(f"  {'one-line change: mkosi --incremental / ours':<52} {MKOSI_CHANGE_SECONDS / change:8.2f} x")
    print(f"  {'export again (target < 1 s)':<52} {again:8.2f} s")


if __name__ == "__main__":
    main()
