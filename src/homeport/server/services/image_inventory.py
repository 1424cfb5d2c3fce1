"""The image inventory behind the `homeport images` commands: where the server keeps its
layers, every image with its size, and pruning the layers no live image uses."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from modal_proto import api_pb2

from homeport.images.layers import LayerStore
from homeport.server.services.images import FAILURE, SUCCESS
from homeport.server.store import schema

LAYER_DIR_SETTING = "image_layer_dir"
# A layer is committed a moment before the image record that uses it is updated; a prune
# running in that moment must not take it.
PRUNE_GRACE_S = 2.0


def record_layer_dir(engine: sa.Engine, layer_dir: Path) -> None:
    """The server says where its layers are, so `homeport images` finds them."""
    s = schema.server_settings
    with engine.begin() as connection:
        connection.execute(s.delete().where(s.c.key == LAYER_DIR_SETTING))
        connection.execute(s.insert().values(key=LAYER_DIR_SETTING, value=str(layer_dir)))


def recorded_layer_dir(engine: sa.Engine) -> Path | None:
    s = schema.server_settings
    with engine.connect() as connection:
        value = connection.execute(sa.select(s.c.value).where(s.c.key == LAYER_DIR_SETTING)).scalar()
    return Path(value) if value else None


def list_images(engine: sa.Engine, layers: LayerStore) -> list[dict[str, object]]:
    """Every image with its status, layer count and size (layers shared with other images
    are counted in each)."""
    i = schema.images
    with engine.connect() as connection:
        rows = connection.execute(sa.select(i).order_by(i.c.created_at)).all()
    images = []
    for row in rows:
        chain = json.loads(row.layers) if row.layers else []
        definition = api_pb2.Image.FromString(row.definition)
        steps = [
            command
            for command in definition.dockerfile_commands
            if command.strip() and not command.startswith("FROM base")
        ]
        images.append(
            {
                "id": row.id,
                "status": {SUCCESS: "built", FAILURE: "failed"}.get(row.status, "building"),
                "layers": len(chain),
                "size": sum(layers.size(ref) for ref in chain if not ref.startswith("base:")),
                "base": next((ref for ref in chain if ref.startswith("base:")), ""),
                "built_at": row.built_at,
                "last_step": steps[-1] if steps else "",
            }
        )
    return images


def prune_layers(engine: sa.Engine, layers: LayerStore) -> tuple[list[str], int]:
    """Remove the layers no live image (built or building) uses; returns (refs, bytes freed).
    Failed images keep nothing: their layers go unless a live image shares them."""
    i = schema.images
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(i.c.layers).where(i.c.status != FAILURE, i.c.layers.is_not(None))
        ).all()
    live = {ref for row in rows for ref in json.loads(row.layers)}
    removed, freed = [], 0
    for ref in layers.all_refs():
        if ref in live or layers.age(ref) < PRUNE_GRACE_S:
            continue
        freed += layers.size(ref)
        layers.remove(ref)
        removed.append(ref)
    return removed, freed
