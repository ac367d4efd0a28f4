# openos365 recipes: thin wrappers over scripts/, the CLI and pytest.

# install system tools (apt) and the package in .venv
setup:
    ./scripts/setup-host.sh

# build layers/server, export a bootable qcow2 and boot it under qemu
demo:
    .venv/bin/openos365 export --to qcow2 layers/server -o out
    .venv/bin/openos365 test out/server.qcow2

# the whole test suite (what CI runs); `just test -m "not boot"` for a quicker run
test *ARGS:
    ./scripts/test.sh {{ARGS}}

lint:
    .venv/bin/ruff check toolkit tests bench

# speed and size ratios (see bench/README.md)
bench:
    .venv/bin/python bench/flatten.py
    .venv/bin/python bench/disk.py
    .venv/bin/python bench/iso.py
    .venv/bin/python bench/change.py

# openos365 and mkosi side by side (about 10 minutes; root, Debian's archive), and growth with image size
bench-peers:
    .venv/bin/python bench/peers.py
bench-scale:
    .venv/bin/python bench/scale.py
