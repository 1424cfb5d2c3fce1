"""A function's autoscaler settings: what its decorator and `update_autoscaler` say about
how many containers it keeps, may have, and how long idle ones live."""

from __future__ import annotations

import dataclasses

from modal_proto import api_pb2


@dataclasses.dataclass(frozen=True)
class Autoscaling:
    """A function's autoscaler settings, from its decorator or `update_autoscaler`."""

    min_containers: int
    max_containers: int  # 0: as many as the node allows
    buffer_containers: int
    scaledown_window_s: float

    @property
    def keeps_warm(self) -> bool:
        return self.min_containers > 0 or self.buffer_containers > 0


def autoscaling(definition: api_pb2.Function, default_scaledown_s: float) -> Autoscaling:
    """Client 1.6.4 sends `autoscaler_settings` (fields set only when given) and still the
    older fields (warm_pool_size, concurrency_limit, task_idle_timeout_secs,
    _experimental_buffer_containers): the new ones win where set."""
    settings = definition.autoscaler_settings

    def pick(field: str, legacy: int) -> int:
        return getattr(settings, field) if settings.HasField(field) else legacy  # type: ignore[no-any-return,arg-type]

    return Autoscaling(
        min_containers=pick("min_containers", definition.warm_pool_size),
        max_containers=pick("max_containers", definition.concurrency_limit),
        buffer_containers=pick("buffer_containers", definition._experimental_buffer_containers),
        scaledown_window_s=float(
            pick("scaledown_window", definition.task_idle_timeout_secs) or default_scaledown_s
        ),
    )


def merge_autoscaler_settings(definition: api_pb2.Function, update: api_pb2.AutoscalerSettings) -> None:
    """`update_autoscaler(...)`: the fields given replace the current ones."""
    for field in (
        "min_containers",
        "max_containers",
        "buffer_containers",
        "scaleup_window",
        "scaledown_window",
    ):
        if update.HasField(field):
            setattr(definition.autoscaler_settings, field, getattr(update, field))
