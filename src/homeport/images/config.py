"""What an image says about how its processes run (the OCI image config's share):
environment, working directory, user, entrypoint, command and build shell."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class ImageConfig:
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    entrypoint: list[str] = dataclasses.field(default_factory=list)
    cmd: list[str] = dataclasses.field(default_factory=list)
    shell: list[str] = dataclasses.field(default_factory=lambda: ["/bin/sh", "-c"])
    python_version: str = ""  # "3.11.2", measured in the finished image; "" if it has no python

    def copy(self) -> ImageConfig:
        return ImageConfig.from_json(self.to_json())

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ImageConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: item for key, item in value.items() if key in known})
