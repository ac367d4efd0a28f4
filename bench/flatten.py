"""Build and flatten times of layers/server, and flattening as a ratio to `podman export | tar -x`.

    python bench/flatten.py            warm rebuild + flatten (uses the engine's normal store)
    python bench/flatten.py --cold     also a cold build (bootstrap included) in a separate, empty store
"""

from __future__ import annotations

import argparse

from common import REPO, cleanup, openos365, plain_flatten, ratio, scratch, sh, timed

REF = "localhost/openos365/server:latest"


def cold_build(work) -> float:
    storage = work / "storage"
    conf = work / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\nrunroot = "{storage}/run"\ngraphroot = "{storage}/root"\n')
    env = {"CONTAINERS_STORAGE_CONF": str(conf)}
    try:
        return timed("cold build (bootstrap + base + server)",
                     lambda: openos365("build", "layers/server", workdir=work / "wd", env=env))
    finally:
        sh("podman", "rmi", "--all", "--force", env=env)  # only the bench's own store (env); then rmtree


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true", help="also time a cold build in an empty image store")
    args = parser.parse_args()
    work = scratch()
    print(f"bench/flatten.py on {REPO}")
    try:
        if args.cold:
            cold_build(work)
        openos365("build", "layers/server")
        timed("warm rebuild (no change: all cache hits)", lambda: openos365("build", "layers/server"))
        ours = timed("openos365 flatten (export --to dir, empty cache)",
                     lambda: openos365("export", "--to", "dir", REF, "-o", str(work / "out"), workdir=work / "wd"))
        floor = timed("floor: podman export | tar -x", lambda: plain_flatten(REF, work / "plain"))
        ratio("flatten / floor", ours, floor)
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
