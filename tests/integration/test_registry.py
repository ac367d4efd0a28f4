"""pull / push against a real registry (Debian's docker-registry on 127.0.0.1), the shared build cache of
`build --cache-registry` between two builders with empty image stores, and the registry error messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.integration.registry_support import (
    Registry,
    Store,
    authfile,
    empty_store,
    free_port,
    running_registry,
    tiny_rootfs,
)

pytestmark = [pytest.mark.integration, pytest.mark.registry]

TINY = "localhost/openos365-test/tiny:1"
PASSWORD = "s3cret-Pa55word"
CONTAINERFILE = """ARG PARENT
FROM ${PARENT}
RUN echo "first RUN, pid $$" > /stamp-1
RUN echo "second RUN, pid $$" > /stamp-2
LABEL org.opencontainers.image.title="cache test"
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory):
    with running_registry(tmp_path_factory.mktemp("auth-registry"), {"alice": PASSWORD}) as reg:
        yield reg


def store(tmp_path_factory: pytest.TempPathFactory, name: str, *registries: Registry):
    return empty_store(tmp_path_factory.mktemp(name), [r.host for r in registries])


@pytest.fixture(scope="module")
def first_store(tmp_path_factory, registry, auth_registry):
    """A builder's store holding a tiny image made from a 2 MB tar (podman import)."""
    with store(tmp_path_factory, "store-a", registry, auth_registry) as st:
        rootfs = tiny_rootfs(st.directory / "tiny.tar")
        st.podman("import", "--change", 'CMD ["/bin/sh"]', str(rootfs), TINY)
        yield st


@pytest.fixture(scope="module")
def pushed(registry: Registry, first_store: Store) -> list[str]:
    targets = [f"{registry.host}/test/tiny:1", f"docker://{registry.host}/mirror/tiny:1"]
    result = cli("push", TINY, *targets, "--no-tls-verify", env=first_store.env)
    assert "to 2 target(s)" in result.stderr
    return [t.removeprefix("docker://") for t in targets]


def no_files(directory: Path) -> bool:
    return not directory.exists() or not any(p.is_file() for p in directory.rglob("*"))


def test_push_to_several_targets_then_pull_into_an_empty_store(tmp_path_factory, registry, first_store, pushed):
    with store(tmp_path_factory, "store-b", registry) as second:
        assert second.podman("images", "-q").stdout.strip() == ""
        cli("pull", pushed[0], "--no-tls-verify", env=second.env)
        # no flag: TLS follows the engine's registries.conf, which marks this registry insecure
        cli("pull", pushed[1], env=second.env)
        assert second.image_id(pushed[0]) == first_store.image_id(TINY)
        assert second.image_id(pushed[1]) == first_store.image_id(TINY)


def test_second_builder_reuses_the_layers_the_first_pushed(tmp_path_factory, registry, pushed):
    """Two builders with empty stores share `--cache-registry`: the second runs no RUN step."""
    layer = tmp_path_factory.mktemp("project") / "layers" / "cached"
    layer.mkdir(parents=True)
    (layer / "layer.yaml").write_text(f"from: {pushed[0]}\nimage: localhost/openos365-test/cached\n")
    (layer / "Containerfile").write_text(CONTAINERFILE)
    cache = f"{registry.host}/test/build-cache"
    ref = "localhost/openos365-test/cached:latest"
    with store(tmp_path_factory, "builder-1", registry) as one, store(tmp_path_factory, "builder-2", registry) as two:
        first = cli("-v", "build", "--cache-registry", cache, str(layer), env=one.env).stderr
        second = cli("-v", "build", "--cache-registry", cache, str(layer), env=two.env).stderr
        assert first.count("Pushing cache") >= 2, first[-3000:]
        assert run_steps(first) == {"RUN first": False, "RUN second": False}, first[-3000:]
        assert run_steps(second) == {"RUN first": True, "RUN second": True}, second[-3000:]
        assert "Cache pulled from remote" in second
        assert one.image_id(ref) == two.image_id(ref)   # same layers: the RUN output was reused, not re-made


def run_steps(build_output: str) -> dict[str, bool]:
    """RUN steps of a `build -v` output -> whether the engine reused a cached layer for it."""
    steps: dict[str, bool] = {}
    current = None
    for line in build_output.splitlines():
        found = re.search(r"STEP \d+/\d+: (RUN \S+ \"(\w+))?", line)
        if found:
            current = f"RUN {found.group(2)}" if found.group(1) else None
            if current:
                steps.setdefault(current, False)
        elif current and "--> Using cache" in line:
            steps[current] = True
    return steps


def test_unreachable_registry_is_a_clear_error(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    result = cli("pull", f"{closed}/test/tiny:1", "--no-tls-verify", check=False)
    assert result.returncode != 0
    assert "cannot reach the registry" in result.stderr and "hint:" in result.stderr
    out = tmp_path / "out"
    result = cli("export", "--to", "docker", f"docker://{closed}/test/tiny:1", "-o", str(out), "--no-tls-verify",
                 check=False)
    assert result.returncode != 0 and "cannot reach the registry" in result.stderr
    assert no_files(out)


def test_unknown_tag_is_a_clear_error(tmp_path: Path, registry: Registry, first_store: Store, pushed) -> None:
    result = cli("pull", f"{registry.host}/test/tiny:no-such-tag", "--no-tls-verify", env=first_store.env,
                 check=False)
    assert result.returncode != 0
    assert "no such image" in result.stderr and "hint:" in result.stderr
    out = tmp_path / "out"
    result = cli("--workdir", str(tmp_path / "work"), "export", "--to", "wsl",
                 f"docker://{registry.host}/test/no-such-repo:1", "-o", str(out), env=first_store.env, check=False)
    assert result.returncode != 0 and "no such image" in result.stderr
    assert no_files(out)


def test_bad_credentials_are_a_clear_error_and_never_printed(tmp_path, auth_registry, first_store) -> None:
    target = f"{auth_registry.host}/test/tiny:1"
    good = authfile(tmp_path / "good.json", auth_registry.host, "alice", PASSWORD)
    bad = authfile(tmp_path / "bad.json", auth_registry.host, "alice", PASSWORD + "-wrong")
    result = cli("-v", "push", TINY, target, "--authfile", str(bad), env=first_store.env, check=False)
    assert result.returncode != 0
    assert "refused the credentials" in result.stderr and "hint:" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    result = cli("-v", "push", TINY, target, "--authfile", str(good), env=first_store.env)
    assert PASSWORD not in result.stdout + result.stderr
    result = cli("pull", target, "--authfile", str(bad), env=first_store.env, check=False)
    assert result.returncode != 0 and "refused the credentials" in result.stderr
    (tmp_path / "empty.json").write_text('{"auths": {}}\n')      # not logged in at all
    result = cli("pull", target, env={**first_store.env, "REGISTRY_AUTH_FILE": str(tmp_path / "empty.json")},
                 check=False)
    assert result.returncode != 0 and "refused the credentials" in result.stderr
    result = cli("pull", target, "--authfile", str(tmp_path / "missing.json"), env=first_store.env, check=False)
    assert result.returncode != 0 and "no such file" in result.stderr
