"""layers/<name> -> the ordered chain of layers to build (root first)."""

from __future__ import annotations

from pathlib import Path

from .config import LayerConfig, load_layer
from .errors import UserError, shown


def is_layer_dir(path: Path) -> bool:
    return path.is_dir() and (path / "layer.yaml").is_file()


def chain(layer_dir: Path) -> list[LayerConfig]:
    """The layer at layer_dir and its parents, root first. Parents live beside it (same layers/ dir)."""
    layer_dir = layer_dir.resolve()
    if not layer_dir.is_dir():
        raise UserError(f"{shown(layer_dir)}: no such layer directory",
                        hint="give a directory like layers/server, or an image reference")
    order: list[LayerConfig] = []
    seen: list[str] = []
    current: LayerConfig | None = load_layer(layer_dir)
    while current is not None:
        if current.name in seen:
            cycle = " -> ".join([*seen[seen.index(current.name):], current.name])
            raise UserError(f"{shown(current.directory / 'layer.yaml')}: parent cycle {cycle}",
                            hint="one layer of the cycle must start `from:` an image instead")
        seen.append(current.name)
        order.append(current)
        if current.parent is None:
            break
        parent_dir = current.directory.parent / current.parent
        if not is_layer_dir(parent_dir):
            raise UserError(f"{shown(current.directory / 'layer.yaml')}: parent '{current.parent}' not found "
                            f"(looked for {shown(parent_dir)}/layer.yaml)",
                            hint=f"create layers/{current.parent} or fix 'parent'")
        current = load_layer(parent_dir)
    return list(reversed(order))


def all_layers(layers_root: Path) -> list[LayerConfig]:
    if not layers_root.is_dir():
        raise UserError(f"{shown(layers_root)}: no such directory",
                        hint="give the directory that holds the layers, e.g. `openos365 layers layers`")
    return [load_layer(d) for d in sorted(layers_root.iterdir()) if is_layer_dir(d)]
