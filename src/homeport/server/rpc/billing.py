"""Billing RPCs: `modal billing report|summary|rates` and `Workspace.billing.*`, answered
from the containers' usage records and the server's rates file."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal

from modal_proto import api_pb2

from homeport.server import errors
from homeport.server.context import RequestContext
from homeport.server.rpc import handler, times
from homeport.server.services import billing
from homeport.server.store.hosting import run_long


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


@handler("WorkspaceBillingRates")
async def workspace_billing_rates(
    context: RequestContext, request: api_pb2.WorkspaceBillingRatesRequest
) -> api_pb2.WorkspaceBillingRatesResponse:
    rates = context.state.rates
    return api_pb2.WorkspaceBillingRatesResponse(rates=rates.as_map(), formatted=rates.formatted())


@handler("WorkspaceBillingReport")
async def workspace_billing_report(
    context: RequestContext,
    request: api_pb2.WorkspaceBillingReportRequest,
    send: Callable[[api_pb2.WorkspaceBillingReportItem], Awaitable[None]],
) -> None:
    """One item per app and hour (resolution "h") or day ("d", the default), oldest first,
    with the app's tags named in `tag_names` ("*": all of them)."""
    start = times.seconds(request.start_timestamp, "start_timestamp")
    end = (
        times.seconds(request.end_timestamp, "end_timestamp")
        if request.HasField("end_timestamp")
        else time.time()
    )
    if start >= end:
        raise errors.invalid_argument(
            f"the report's start ({_when(start)}) is not before its end ({_when(end)}); give --start before --end"
        )
    resolution = request.resolution or "d"
    if resolution not in ("d", "h"):
        raise errors.invalid_argument(f"resolution {resolution!r} is not one of 'd' (daily) and 'h' (hourly)")
    usages = await run_long(
        context.state.engine, context.state.usage.between, context.workspace_id, start, end
    )
    if request.app_ids:
        usages = [usage for usage in usages if usage.app_id in set(request.app_ids)]
    environments = dict(context.state.environments.list(context.workspace_id))
    wanted_environments = {environments.get(environment_id, "") for environment_id in request.environment_ids}
    by_interval = billing.costs(usages, context.state.rates, start, end, resolution)
    for (app_id, interval), by_resource in sorted(
        by_interval.items(), key=lambda item: (item[0][1], item[0][0])
    ):
        app = context.state.apps.get(context.workspace_id, app_id)
        if request.environment_ids and app.environment_name not in wanted_environments:
            continue
        tags = context.state.apps.tags(app_id) if request.tag_names else {}
        if "*" not in request.tag_names:
            tags = {name: value for name, value in tags.items() if name in request.tag_names}
        item = api_pb2.WorkspaceBillingReportItem(
            object_id=app_id,
            description=app.name or app.description,
            environment_name=app.environment_name,
            cost=str(sum(by_resource.values(), Decimal(0))),
            cost_by_resource={name: str(value) for name, value in by_resource.items()},
            tags=tags,
        )
        item.interval.FromSeconds(int(interval))
        await send(item)


@handler("WorkspaceBillingSummary")
async def workspace_billing_summary(
    context: RequestContext, request: api_pb2.WorkspaceBillingSummaryRequest
) -> api_pb2.WorkspaceBillingSummaryResponse:
    """The month starting at `start_timestamp`: metered cost by deployed and ephemeral apps.
    Homeport applies no plan, credits or discounts: billed equals metered."""
    start, end = billing.month_bounds(times.seconds(request.start_timestamp, "start_timestamp"))
    usages = await run_long(
        context.state.engine, context.state.usage.between, context.workspace_id, start, end
    )
    breakdown = {"deployed": Decimal(0), "ephemeral": Decimal(0)}
    for (app_id, _), by_resource in billing.costs(usages, context.state.rates, start, end, "d").items():
        app = context.state.apps.get(context.workspace_id, app_id)
        kind = "deployed" if app.name else "ephemeral"
        breakdown[kind] += sum(by_resource.values(), Decimal(0))
    total = sum(breakdown.values(), Decimal(0))
    response = api_pb2.WorkspaceBillingSummaryResponse(
        metered_cost=str(total),
        billed_cost=str(total),
        metered_cost_breakdown={name: str(value) for name, value in breakdown.items()},
    )
    response.start_timestamp.FromSeconds(int(start))
    response.end_timestamp.FromSeconds(int(end))
    return response
