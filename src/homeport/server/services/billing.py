"""What usage costs: prices per hour from a rates file the administrator edits (`homeport
serve --rates FILE`; src/homeport/rates.default.toml holds placeholders), applied to the
usage records of containers, split by the hour or day each part of a container's life
fell in.

A container is charged, for each interval it overlaps, its share (by time) of: the larger
of the CPU cores it reserved and those it used, the larger of the memory it reserved and
its peak, and its GPUs by model.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from homeport.server.services.usage import ContainerUsage

DEFAULT_RATES = Path(__file__).resolve().parent.parent.parent / "rates.default.toml"
CENTS = Decimal("0.000001")


@dataclasses.dataclass(frozen=True)
class Rates:
    """Prices per hour."""

    currency: str
    cpu: Decimal  # per core-hour
    memory: Decimal  # per GiB-hour
    gpu: dict[str, Decimal]  # per GPU-hour, by model

    @classmethod
    def load(cls, path: Path | None) -> Rates:
        path = path or DEFAULT_RATES
        try:
            data = tomllib.loads(path.read_text())
            rates = data["rates"]
            return cls(
                currency=str(data.get("currency", "USD")),
                cpu=Decimal(str(rates["cpu"])),
                memory=Decimal(str(rates["memory"])),
                gpu={
                    str(model).upper(): Decimal(str(price)) for model, price in rates.get("gpu", {}).items()
                },
            )
        except (OSError, KeyError, ValueError, ArithmeticError, tomllib.TOMLDecodeError) as error:
            raise SystemExit(
                f"the rates file {path} is not usable ({error!r}); it needs [rates] cpu and memory and "
                "optionally [rates.gpu] prices per model: see src/homeport/rates.default.toml"
            ) from None

    def as_map(self) -> dict[str, str]:
        """The client's WorkspaceBillingRates map: resource name -> price per hour."""
        prices = {
            "cpu": self.cpu,
            "memory": self.memory,
            **{f"gpu-{m.lower()}": p for m, p in self.gpu.items()},
        }
        return {name: str(price) for name, price in prices.items()}

    def formatted(self) -> str:
        lines = [
            f"Prices per hour ({self.currency}):",
            f"  CPU core      {self.cpu}",
            f"  Memory GiB    {self.memory}",
        ]
        lines += [f"  GPU {model:<10}{price}" for model, price in sorted(self.gpu.items())]
        return "\n".join(lines)


def interval_starts(start: float, end: float, resolution: str) -> list[float]:
    """Start times (epoch seconds, UTC) of the hours or days that [start, end) overlaps."""
    step = timedelta(hours=1) if resolution == "h" else timedelta(days=1)
    first = datetime.fromtimestamp(start, UTC).replace(minute=0, second=0, microsecond=0)
    if resolution != "h":
        first = first.replace(hour=0)
    starts, current = [], first
    while current.timestamp() < end:
        starts.append(current.timestamp())
        current += step
    return starts


def costs(
    usages: list[ContainerUsage], rates: Rates, start: float, end: float, resolution: str
) -> dict[tuple[str, float], dict[str, Decimal]]:
    """(app id, interval start) -> cost by resource, for usage inside [start, end)."""
    length = 3600.0 if resolution == "h" else 86400.0
    totals: dict[tuple[str, float], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for usage in usages:
        lived = max(usage.stopped_at - usage.started_at, 1e-9)
        for interval in interval_starts(max(usage.started_at, start), min(usage.stopped_at, end), resolution):
            overlap = min(usage.stopped_at, interval + length, end) - max(usage.started_at, interval, start)
            if overlap <= 0:
                continue
            hours = Decimal(str(overlap / 3600))
            used_cores = usage.cpu_seconds / lived
            cores = Decimal(str(max(usage.cpu_reserved_cores, used_cores)))
            gib = Decimal(str(max(usage.memory_reserved_mib, usage.memory_peak_mib) / 1024))
            bucket = totals[(usage.app_id, interval)]
            bucket["cpu"] += cores * hours * rates.cpu
            bucket["memory"] += gib * hours * rates.memory
            if usage.gpu_count:
                price = rates.gpu.get(usage.gpu_type.upper(), Decimal(0))
                bucket[f"gpu-{usage.gpu_type.lower()}"] += usage.gpu_count * hours * price
    return {key: {name: value.quantize(CENTS) for name, value in by.items()} for key, by in totals.items()}


def month_bounds(start: float) -> tuple[float, float]:
    first = datetime.fromtimestamp(start, UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + timedelta(days=32)).replace(day=1)
    return first.timestamp(), following.timestamp()
