"""docker's argument building and its daemon and builder checks; no docker needed (its CLI is faked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openos365 import build
from openos365 import engine as engine_pkg
from openos365.engine import docker as docker_mod
from openos365.engine.base import BuildRequest, ImageInfo, repository
from openos365.engine.docker import Docker, DockerSetup, choose_builder
from openos365.errors import MissingToolError, UserError
from openos365.runner import Result

NEW_CLI, OLD_CLI = "28.2.2", "20.10.24+dfsg1"   # the docker CLI of this kind of machine; Debian 12's docker.io


@pytest.mark.parametrize("client,has_buildx,env,buildkit", [
    (NEW_CLI, False, None, False),    # docker 23+ without buildx: its legacy builder
    (NEW_CLI, True, None, True),      # docker 23+ with buildx: BuildKit
    (OLD_CLI, False, None, False),    # docker 20.10: classic unless asked
    (OLD_CLI, False, "1", True),      # docker 20.10: BuildKit is built into the CLI
    (NEW_CLI, True, "0", False),
    (NEW_CLI, True, "true", True),
    (OLD_CLI, False, "False", False),
    (NEW_CLI, False, "", False),
])
def test_the_builder_is_the_one_docker_itself_would_run(client, has_buildx, env, buildkit):
    assert choose_builder(client, has_buildx, env) is buildkit


def test_buildkit_asked_for_where_the_cli_has_none_names_the_fix():
    with pytest.raises(MissingToolError) as err:
        choose_builder(NEW_CLI, False, "1")
    assert "buildx plugin, which is not installed" in err.value.message
    assert "docker-buildx" in (err.value.hint or "") and "DOCKER_BUILDKIT=0" in (err.value.hint or "")
    with pytest.raises(UserError, match="DOCKER_BUILDKIT='yes please' is neither 1 nor 0"):
        choose_builder(NEW_CLI, True, "yes please")


def request(tmp_path: Path, **kwargs) -> BuildRequest:
    return BuildRequest(containerfile=tmp_path / "Containerfile", context=tmp_path,
                        tags=["localhost/x/web:latest"], build_args={"PARENT": "localhost/x/base:0123456789ab"},
                        **kwargs)


@pytest.mark.parametrize("buildkit", [False, True])
def test_build_arguments_for_each_builder(tmp_path, buildkit):
    argv = Docker()._build_argv(request(tmp_path, no_cache=True), "/t/iid", buildkit)
    assert argv[:5] == ["docker", "build", "--iidfile=/t/iid", "--network=host", "-f"]
    assert ("--progress=plain" in argv) is buildkit
    assert argv[argv.index("--build-arg") + 1] == "PARENT=localhost/x/base:0123456789ab"
    assert "--no-cache" in argv and argv[-2:] == ["--", str(tmp_path)]


@pytest.mark.parametrize("buildkit,builder", [(False, "classic builder"), (True, "BuildKit (docker driver)")])
def test_a_registry_cache_is_refused_naming_the_builder(tmp_path, buildkit, builder):
    with pytest.raises(UserError) as err:
        Docker()._build_argv(request(tmp_path, cache_from="r/c", cache_to="r/c"), "iid", buildkit)
    assert f"docker's {builder} cannot write a build cache to a registry" in err.value.message
    assert "--engine podman or buildah" in (err.value.hint or "")


class FakeDocker:
    """Stands in for the docker CLI: `docker version` as it prints with and without a daemon."""

    def __init__(self, client: str, server: str | None, buildx: bool = False):
        self.client, self.server, self.buildx = client, server, buildx
        self.calls: list[tuple[list[str], dict[str, str] | None]] = []

    def run(self, argv, **kwargs) -> Result:
        argv = [str(a) for a in argv]
        self.calls.append((argv, kwargs.get("env")))
        if argv[1] == "version":
            out = json.dumps({"Client": {"Version": self.client},
                              "Server": {"Version": self.server} if self.server else None})
            tail = [] if self.server else [f"Cannot connect to the Docker daemon at {self.where}. "
                                           "Is the docker daemon running?"]
            return Result(argv, 0 if self.server else 1, out, tail)
        if argv[1] == "build":
            Path(next(a for a in argv if a.startswith("--iidfile=")).split("=", 1)[1]).write_text("sha256:ab\n")
        return Result(argv, 0, "", [])

    def succeeds(self, argv) -> bool:
        self.calls.append(([str(a) for a in argv], None))
        return self.buildx and argv[1] == "buildx"

    where = "unix:///var/run/docker.sock"


def fake(monkeypatch, docker: FakeDocker) -> FakeDocker:
    monkeypatch.setattr(docker_mod, "run", docker.run)
    monkeypatch.setattr(docker_mod, "succeeds", docker.succeeds)
    return docker


def test_no_reachable_daemon_is_a_clear_error_from_detect(monkeypatch, tmp_path):
    socket = f"unix://{tmp_path}/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", socket)
    docker = fake(monkeypatch, FakeDocker(NEW_CLI, None))
    docker.where = socket
    monkeypatch.setattr(engine_pkg, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(MissingToolError) as err:
        engine_pkg.detect("docker")
    assert err.value.message.startswith(f"docker cannot reach its daemon at {socket} (Cannot connect")
    assert "DOCKER_HOST" in (err.value.hint or "") and "--engine podman" in (err.value.hint or "")


@pytest.mark.parametrize("client,buildx,env,buildkit,probes_buildx", [
    (NEW_CLI, False, None, False, True),
    (NEW_CLI, True, None, True, True),
    (OLD_CLI, False, "1", True, False),   # a 20.10 CLI is never asked about buildx
])
def test_build_tells_docker_the_builder_it_chose(monkeypatch, tmp_path, client, buildx, env, buildkit,
                                                 probes_buildx):
    monkeypatch.delenv("DOCKER_BUILDKIT", raising=False)
    if env is not None:
        monkeypatch.setenv("DOCKER_BUILDKIT", env)
    docker = fake(monkeypatch, FakeDocker(client, "20.10.24+dfsg1", buildx))
    engine = Docker()
    assert engine.build(request(tmp_path)) == "ab"
    assert engine.setup() == DockerSetup(client, "20.10.24+dfsg1", buildkit)
    argv, build_env = next(call for call in docker.calls if call[0][1] == "build")
    assert build_env == {"DOCKER_BUILDKIT": "1" if buildkit else "0"}
    assert ("--progress=plain" in argv) is buildkit
    assert any(call[0][1] == "buildx" for call in docker.calls) is probes_buildx
    assert [call[0][1] for call in docker.calls].count("version") == 1   # asked once per engine


def test_an_oci_archive_is_read_from_the_daemon_docker_host_names(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/test/docker.sock")
    docker = fake(monkeypatch, FakeDocker(NEW_CLI, "20.10.24"))
    Docker().save("localhost/x/web:latest", tmp_path / "a.tar", "oci-archive")
    argv = docker.calls[-1][0]
    assert argv[:3] == ["skopeo", "copy", "--src-daemon-host=unix:///run/test/docker.sock"]
    assert argv[-2:] == ["docker-daemon:localhost/x/web:latest", f"oci-archive:{tmp_path / 'a.tar'}"]


@pytest.mark.parametrize("ref,repo", [
    ("localhost/openos365/debian:bookworm", "localhost/openos365/debian"),
    ("registry.example.com:5000/os/base:1", "registry.example.com:5000/os/base"),
    ("registry.example.com:5000/os/base", "registry.example.com:5000/os/base"),
    ("debian@sha256:" + "0" * 64, "debian"),
    ("debian", "debian"),
])
def test_repository_drops_tag_and_digest_only(ref, repo):
    assert repository(ref) == repo


def test_a_root_layer_names_its_from_image_by_a_tag_for_docker(tmp_path, monkeypatch):
    """BuildKit refuses a bare image id in FROM, also for the first layer of a chain (its `from:` image)."""
    layer = tmp_path / "layers" / "web"
    layer.mkdir(parents=True)
    (layer / "layer.yaml").write_text("from: localhost/os/debian:bookworm\nimage: localhost/os/web\n")
    (layer / "Containerfile").write_text("ARG PARENT\nFROM ${PARENT}\n")
    docker = fake(monkeypatch, FakeDocker(OLD_CLI, OLD_CLI))
    base_id = "cd" * 32

    def inspect(self, ref):
        return ImageInfo(id=base_id if "debian" in ref else "ab" * 32, names=(), created=0, config={})

    monkeypatch.setattr(Docker, "inspect", inspect)
    build.build_layer_chain(layer, Docker(), workdir=tmp_path / "work")
    assert ["docker", "tag", "--", base_id, "localhost/os/debian:cdcdcdcdcdcd"] in [c[0] for c in docker.calls]
    argv = next(c[0] for c in docker.calls if c[0][1] == "build")
    assert argv[argv.index("--build-arg") + 1] == "PARENT=localhost/os/debian:cdcdcdcdcdcd"
