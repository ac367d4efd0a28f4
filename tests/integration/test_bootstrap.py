"""`openos365 bootstrap`: a base image from Debian's archive, no registry, reproducible under SOURCE_DATE_EPOCH."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.conftest import REPO, cli

pytestmark = pytest.mark.integration


def recipe_copy(tmp_path, image: str):
    recipe = tmp_path / "debian-test"
    recipe.mkdir(parents=True)
    data = yaml.safe_load((REPO / "Containerfiles/debian-bookworm/bootstrap.yaml").read_text())
    data["image"] = image
    data["include"] = ["systemd-sysv"]  # smaller: the test is about reproducibility, not content
    (recipe / "bootstrap.yaml").write_text(yaml.safe_dump(data))
    return recipe


def layer_digests(ref: str) -> list[str]:
    out = subprocess.run(["podman", "image", "inspect", ref], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["RootFS"]["Layers"]


def test_bootstrap_twice_with_the_same_epoch_gives_the_same_root_tree(tmp_path):
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    refs = []
    for name in ("one", "two"):
        ref = f"localhost/openos365-test/bootstrap-{name}:bookworm"
        result = cli("bootstrap", str(recipe_copy(tmp_path / name, ref)), env=env)
        assert "bootstrapped sha256:" in result.stderr
        refs.append(ref)
    assert layer_digests(refs[0]) == layer_digests(refs[1])


def test_bootstrap_recipe_errors_name_the_file(tmp_path):
    recipe = tmp_path / "bad"
    recipe.mkdir()
    (recipe / "bootstrap.yaml").write_text("image: x\nsuite: bookworm\nmirorr: http://x\n")
    result = cli("bootstrap", str(recipe), check=False)
    assert result.returncode == 2
    assert "bootstrap.yaml: unknown key 'mirorr'" in result.stderr
    result = cli("bootstrap", str(tmp_path / "nowhere"), check=False)
    assert result.returncode == 2 and "no bootstrap.yaml" in result.stderr
