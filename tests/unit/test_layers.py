import pytest

from openos365.errors import UserError
from openos365.layers import all_layers, chain

from .test_config import make_layer


def test_chain_is_root_first(tmp_path):
    make_layer(tmp_path, "base", "from: localhost/x:1\n")
    make_layer(tmp_path, "server", "parent: base\n")
    top = make_layer(tmp_path, "web", "parent: server\n")
    assert [layer.name for layer in chain(top)] == ["base", "server", "web"]


def test_missing_parent(tmp_path):
    top = make_layer(tmp_path, "web", "parent: server\n")
    with pytest.raises(UserError, match="parent 'server' not found") as err:
        chain(top)
    assert "layers/server" in (err.value.hint or "")


def test_cycle(tmp_path):
    make_layer(tmp_path, "a", "parent: b\n")
    top = make_layer(tmp_path, "b", "parent: a\n")
    with pytest.raises(UserError, match="parent cycle b -> a -> b"):
        chain(top)


def test_not_a_directory(tmp_path):
    with pytest.raises(UserError, match="no such layer directory"):
        chain(tmp_path / "nope")


def test_all_layers_lists_the_repo_layers():
    from tests.conftest import REPO

    names = [layer.name for layer in all_layers(REPO / "layers")]
    assert {"base", "server"} <= set(names)
    server = next(layer for layer in all_layers(REPO / "layers") if layer.name == "server")
    assert server.parent == "base"


def test_a_layer_tree_on_another_base_recipe_says_its_release(tmp_path):
    from openos365.build import on_base

    for release in ("bookworm", "trixie"):
        recipe = tmp_path / "Containerfiles" / f"debian-{release}"
        recipe.mkdir(parents=True)
        (recipe / "bootstrap.yaml").write_text(f"image: localhost/openos365/debian:{release}\nsuite: {release}\n")
    make_layer(tmp_path, "base", "from: localhost/openos365/debian:bookworm\nbootstrap: debian-bookworm\n")
    top = make_layer(tmp_path, "server", "parent: base\ntags: [latest, v1]\n")
    rebased = on_base(chain(top), "debian-trixie")
    assert rebased[0].base_image == "localhost/openos365/debian:trixie" and rebased[0].bootstrap == "debian-trixie"
    assert [layer.ref for layer in rebased] == ["localhost/openos365/base:trixie", "localhost/openos365/server:trixie"]
    assert chain(top)[-1].tags == ("latest", "v1")          # the tree itself is unchanged
    with pytest.raises(UserError, match="--base debian-sid: no recipe") as err:
        on_base(chain(top), "debian-sid")
    assert "debian-bookworm, debian-trixie" in (err.value.hint or "")


def test_base_needs_a_tree_that_starts_from_a_recipe(tmp_path):
    from openos365.build import on_base

    (tmp_path / "Containerfiles/debian-trixie").mkdir(parents=True)
    (tmp_path / "Containerfiles/debian-trixie/bootstrap.yaml").write_text("image: x/debian:trixie\nsuite: trixie\n")
    top = make_layer(tmp_path, "web", "from: docker.io/library/nginx:1\n")
    with pytest.raises(UserError, match="does not start from a recipe"):
        on_base(chain(top), "debian-trixie")
