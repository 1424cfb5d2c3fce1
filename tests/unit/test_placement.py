"""Placement across nodes: the least loaded node that could ever hold the container."""

from __future__ import annotations

import asyncio

from homeport.agent.gpus import GpuPool, GpuRequest
from homeport.agent.node import NodeInventory
from homeport.server.nodes import Placement


class FakeNode:
    """A node's books only (a unit test of the choice, not of running containers)."""

    def __init__(self, node_id: str, budget: int, reserved: int = 0, gpus: tuple[str, ...] = ()) -> None:
        self.node_id = node_id
        self.budget = budget
        self.reserved = reserved
        self.gpus = gpus
        self.held: dict[str, int] = {}

    def inventory(self) -> NodeInventory:
        return NodeInventory(
            self.node_id, 0.0, 2, 0.1, self.budget, self.reserved, self.gpus, 0, len(self.held)
        )

    def refusal(self, memory_mib: int, gpu_options: list[tuple[str, int]]) -> str | None:
        pool = GpuPool(list(self.gpus))
        if gpu_options and not any(pool.can_ever_satisfy(GpuRequest(*o)) for o in gpu_options):
            return f"node {self.node_id} has {pool.describe()}"
        return None if memory_mib <= self.budget else f"node {self.node_id} has {self.budget} MiB"

    async def reserve(
        self, task_id: str, memory_mib: int, gpu_options: list[tuple[str, int]]
    ) -> list[int] | None:
        if self.reserved + memory_mib > self.budget:
            return None
        self.reserved += memory_mib
        self.held[task_id] = memory_mib
        return [0] if gpu_options else []


def placed(
    placement: Placement, memory: int, gpus: list[tuple[str, int]] | None = None, starting=None
) -> str | None:  # type: ignore[no-untyped-def]
    got = asyncio.run(placement.reserve("ta-x", memory, gpus or [], starting or {}, 2, False))
    return None if got is None else got[0].node_id


def test_the_least_loaded_node_that_has_room_is_chosen() -> None:
    placement = Placement()
    for node in (FakeNode("a", 1000, 900), FakeNode("b", 1000, 200), FakeNode("c", 4000, 2000)):
        placement.add(node)  # type: ignore[arg-type]
    assert placed(placement, 128) == "b"  # 20% used against c's 50% and a's 90%
    assert placed(placement, 2000) == "c"  # only c has room for that much
    assert placed(placement, 5000) is None  # nobody has room now


def test_a_node_busy_starting_as_many_containers_as_it_has_cores_is_skipped() -> None:
    placement = Placement()
    placement.add(FakeNode("a", 1000))  # type: ignore[arg-type]
    placement.add(FakeNode("b", 1000, 500))  # type: ignore[arg-type]
    assert placed(placement, 128, starting={"a": 2}) == "b"
    assert placed(placement, 128, starting={"a": 2, "b": 2}) is None


def test_gpu_requests_go_only_to_nodes_with_that_model_and_impossible_ones_name_what_exists() -> None:
    placement = Placement()
    placement.add(FakeNode("cpu", 8000))  # type: ignore[arg-type]
    placement.add(FakeNode("gpu", 8000, 4000, ("A10G",)))  # type: ignore[arg-type]
    assert placed(placement, 128, [("A10G", 1)]) == "gpu"
    assert placement.refusal(128, [("A10G", 1)]) is None
    refusal = placement.refusal(128, [("H100", 1)])
    assert refusal is not None
    assert "H100" in refusal and "cpu: 8000 MiB, no GPUs" in refusal and "1x A10G" in refusal


def test_an_empty_cluster_makes_work_wait_rather_than_fail() -> None:
    assert Placement().refusal(128, [("H100", 1)]) is None
    assert placed(Placement(), 128) is None
