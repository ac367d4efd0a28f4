"""What a user names as the input of an export: a layer directory or any image reference.

- `layers/server`               build the chain (cache hits when unchanged), then use the image
- `localhost/openos365/server`  an image in the engine's local store
- `docker://host/repo:tag`      pulled through the engine first
- `oci-archive:F`, `docker-archive:F`, `oci:DIR`   read from disk, no engine needed
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import log
from .build import build_layer_chain, source_date_epoch
from .config import ExportOptions, LayerConfig, artifact_name_from
from .engine import Engine, detect
from .errors import UserError
from .layers import is_layer_dir
from .rootfs import ARCHIVE_PREFIXES, TreeCache, flatten_archive, flatten_engine_image, read_archive


@dataclass(frozen=True)
class Source:
    spec: str
    name: str                    # default artifact base name
    image_id: str
    ref: str | None              # engine reference, when the image is in the engine's store
    tree: Path | None            # flattened root tree (cached: never modify it); None for engine-only exports
    epoch: int                   # SOURCE_DATE_EPOCH used for everything derived from this image
    config: dict[str, Any]       # image config (Env, Entrypoint, Cmd, Labels)
    layer: LayerConfig | None
    engine: Engine | None

    @property
    def defaults(self) -> ExportOptions:
        return self.layer.export if self.layer else ExportOptions()


def name_from_ref(ref: str) -> str:
    last = ref.rstrip("/").split("/")[-1]
    return artifact_name_from(last.split("@")[0].split(":")[0] or "image")


def resolve_image(spec: str, *, engine_name: str | None, workdir: Path, pull: bool = True,
                  tls_verify: bool = True) -> tuple[str, Engine, LayerConfig | None]:
    """A layer dir or engine reference -> (engine ref, engine, layer). Builds or pulls as needed."""
    path = Path(spec)
    if path.is_dir() and not is_layer_dir(path):
        raise UserError(f"{spec}: a directory but not a layer (no layer.yaml)",
                        hint="give a layer directory like layers/server, or an image reference")
    engine = detect(engine_name)
    if is_layer_dir(path):
        built = build_layer_chain(path, engine, workdir=workdir)
        return built.ref, engine, built.layer
    ref = spec.removeprefix("containers-storage:")
    if ref.startswith("docker://"):
        ref = ref.removeprefix("docker://")
        if pull:
            engine.pull(ref, tls_verify=tls_verify)
    engine.require(ref)
    return ref, engine, None


def resolve(spec: str, *, engine_name: str | None, workdir: Path, tls_verify: bool = True,
            flatten: bool = True) -> Source:
    """The source, built or pulled as needed, and (flatten=True) its flattened tree."""
    cache = TreeCache(workdir)
    if spec.startswith(ARCHIVE_PREFIXES):
        if flatten:
            tree, image, epoch = flatten_archive(spec, _env_epoch(), cache)
        else:
            image = read_archive(spec)
            tree, epoch = None, source_date_epoch(0)
        return Source(spec, name_from_ref(image.path.name.split(".")[0]), image.id, None, tree, epoch,
                      image.config.get("config") or {}, None, None)
    ref, engine, layer = resolve_image(spec, engine_name=engine_name, workdir=workdir, tls_verify=tls_verify)
    info = engine.inspect(ref)
    epoch = source_date_epoch(info.created)
    tree = flatten_engine_image(engine, ref, info.id, epoch, cache, workdir) if flatten else None
    name = layer.name if layer else name_from_ref(ref)
    log.note(f"source {spec}: image {info.id[:12]}, SOURCE_DATE_EPOCH={epoch}")
    return Source(spec, name, info.id, ref, tree, epoch, info.config, layer, engine)


def _env_epoch() -> int | None:
    return source_date_epoch(0) if "SOURCE_DATE_EPOCH" in os.environ else None
