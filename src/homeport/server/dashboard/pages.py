"""The dashboard's pages, served by the HTTP listener under /dashboard: apps, functions
(calls, containers, charts, autoscaler settings), containers (live logs, stop), images
(build logs), storage (a volume file browser; secret names, never values), usage and cost.
Server-rendered with Jinja2; the only script is the log page's few lines of polling."""

from __future__ import annotations

import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from modal_proto import api_pb2

from homeport.server.dashboard import charts, queries
from homeport.server.dashboard.signin import SESSION_COOKIE, SESSION_LIFETIME_S, Signer
from homeport.server.scheduler import DEFAULT_IDLE_S
from homeport.server.services import autoscaling, billing, function_metrics
from homeport.server.services import functions as catalog
from homeport.server.services.stats import StatsService
from homeport.server.state import ServerState

HERE = Path(__file__).resolve().parent
PREFIX = "/dashboard"
CALLS_SHOWN = 50
USAGE_DAYS = 30


class Dashboard:
    def __init__(self, state: ServerState, signer: Signer) -> None:
        self.state = state
        self.signer = signer
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{PREFIX}/signin", self.sign_in),
            web.get(f"{PREFIX}/", self.apps_page),
            web.get(f"{PREFIX}/apps/{{app_id}}", self.app_page),
            web.get(f"{PREFIX}/functions/{{function_id}}", self.function_page),
            web.get(f"{PREFIX}/containers", self.containers_page),
            web.get(f"{PREFIX}/containers/{{task_id}}", self.container_page),
            web.get(f"{PREFIX}/containers/{{task_id}}/logs", self.container_logs),
            web.post(f"{PREFIX}/containers/{{task_id}}/stop", self.stop_container),
            web.get(f"{PREFIX}/images", self.images_page),
            web.get(f"{PREFIX}/images/{{image_id}}", self.image_page),
            web.get(f"{PREFIX}/storage", self.storage_page),
            web.get(f"{PREFIX}/storage/volumes/{{volume_id}}", self.volume_page),
            web.get(f"{PREFIX}/usage", self.usage_page),
            web.get(f"{PREFIX}/sandboxes", self.sandboxes_page),
            web.get(f"{PREFIX}/style.css", self.stylesheet),
            web.get("/apps/{app_id}", self.run_link),
        ]

    # --- plumbing -----------------------------------------------------------------------

    def _workspace(self, request: web.Request) -> str:
        workspace_id = self.signer.workspace_of_session(request.cookies.get(SESSION_COOKIE, ""))
        if workspace_id is None:
            raise web.HTTPUnauthorized(
                text=self.templates.get_template("signin_needed.html").render(prefix=PREFIX),
                content_type="text/html",
            )
        return workspace_id

    def _render(self, request: web.Request, template: str, workspace_id: str, **context: Any) -> web.Response:
        html = self.templates.get_template(template).render(
            prefix=PREFIX,
            workspace=self.state.auth.workspace_name(workspace_id),
            path=request.path,
            **context,
        )
        return web.Response(text=html, content_type="text/html")

    async def sign_in(self, request: web.Request) -> web.Response:
        workspace_id = self.signer.workspace_of_sign_in(request.query.get("t", ""))
        if workspace_id is None:
            raise web.HTTPForbidden(
                text="This sign-in link is invalid or has expired; run `modal dashboard` again."
            )
        response = web.HTTPFound(f"{PREFIX}/")
        response.set_cookie(
            SESSION_COOKIE,
            self.signer.session_token(workspace_id),
            max_age=SESSION_LIFETIME_S,
            httponly=True,
            samesite="Lax",
            path=PREFIX,
        )
        raise response

    async def stylesheet(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(HERE / "static" / "style.css")

    async def run_link(self, request: web.Request) -> web.Response:
        """Where the client's "View run at" links lead: the app's page."""
        raise web.HTTPFound(f"{PREFIX}/apps/{request.match_info['app_id']}")

    # --- pages ------------------------------------------------------------------------------

    async def apps_page(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace(request)
        return self._render(
            request, "apps.html", workspace_id, apps=queries.apps(self.state.engine, workspace_id)
        )

    async def app_page(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace(request)
        try:
            app = self.state.apps.get(workspace_id, request.match_info["app_id"])
        except Exception:
            raise web.HTTPNotFound(text=f"No app {request.match_info['app_id']} in this workspace.") from None
        stats = StatsService(self.state.engine)
        since = time.time() - 86400
        functions = []
        for function in self.state.apps.app_functions(app.id):
            family = stats.family(function.id, with_variants=True)
            recent = stats.inputs(family, since, time.time() + 1)
            done = [record for record in recent if record.state == "done"]
            succeeded = sum(
                1 for record in done if record.call_status == api_pb2.FUNCTION_CALL_INPUT_STATUS_SUCCESS
            )
            functions.append(
                {
                    "id": function.id,
                    "tag": function.tag,
                    "calls": len(recent),
                    "failed": len(done) - succeeded,
                }
            )
        return self._render(
            request,
            "app.html",
            workspace_id,
            app=app,
            state=queries.STATE_NAMES.get(app.state, str(app.state)),
            created=queries.when(app.created_at),
            functions=functions,
            containers=queries.containers(self.state.engine, workspace_id, app_id=app.id),
        )

    async def function_page(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace(request)
        function_id = request.match_info["function_id"]
        try:
            function = self.state.apps.function(function_id)
            app = self.state.apps.get(workspace_id, function.app_id)
            definition, _ = catalog.effective_definition(self.state.apps, function)
        except Exception:
            raise web.HTTPNotFound(text=f"No function {function_id} in this workspace.") from None
        stats = StatsService(self.state.engine)
        family = stats.family(function_id, with_variants=True)
        records = stats.inputs(family, 0, 0, CALLS_SHOWN)
        failed = queries.failures(self.state.engine, [r.input_id for r in records if r.state == "done"])
        calls = [
            {
                "call": record.function_call_id,
                "enqueued": queries.when(record.created_at),
                "status": queries.CALL_STATUS_NAMES.get(record.call_status, "?"),
                "duration": f"{record.finished_at - record.claimed_at:.3f}"
                if record.finished_at and record.claimed_at
                else "",
                "container": record.task_id or "",
                "retries": record.attempt,
                "error": failed.get(record.input_id, ("", ""))[0],
                "traceback": failed.get(record.input_id, ("", ""))[1],
            }
            for record in records
        ]
        now = time.time()
        start, stop, width = function_metrics.resolve_window(now - 3600, now + 60, 0)
        series = {
            s.name: [
                (queries.when(p.timestamp.seconds)[11:16], p.value if p.HasField("value") else 0.0)
                for p in s.points
            ]
            for s in function_metrics.series(stats, family, ["calls"], start, stop, width)
        }
        policy = autoscaling.autoscaling(definition, DEFAULT_IDLE_S)
        return self._render(
            request,
            "function.html",
            workspace_id,
            function=function,
            app=app,
            policy=policy,
            timeout=definition.timeout_secs,
            calls=calls,
            containers=queries.containers(self.state.engine, workspace_id, function_ids=family),
            throughput=charts.bars(series["calls_started_count"], "calls", "Calls per minute, last hour"),
            latency=charts.bars(series["calls_execution_time_avg"], "s", "Mean execution time per minute"),
        )

    async def containers_page(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace(request)
        return self._render(
            request,
            "containers.html",
            workspace_id,
            containers=queries.containers(self.state.engine, workspace_id),
        )

    async def container_page(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace(request)
        found = queries.task(self.state.engine, workspace_id, request.match_info["task_id"])
        if found is None:
            raise web.HTTPNotFound(text=f"No container {request.match_info['task_id']} in this workspace.")
        return self._render(
            request, "container.html", workspace_id, task=found, started=queries.when(found.created_at)
        )

    async def container_logs(self, request: web.Request) -> web.Response:
        """Log lines after `after` (a sequence number), for the container page's polling."""
        workspace_id = self._workspace(request)
        found = queries.task(self.state.engine, workspace_id, request.match_info["task_id"])
        if found is None:
            raise web.HTTPNotFound()
        after_text = request.query.get("after", "0") or "0"
        if not after_text.isdigit():
            raise web.HTTPBadRequest(text="after= must be a log sequence number")
        after = int(after_text)
        entries = self.state.logs.read(found.app_id, after_seq=after, limit=500, task_id=found.id)
        return web.json_response(
            {
                "entries": [{"seq": e.seq, "fd": e.file_descriptor, "data": e.data} for e in entries],
                "state": found.state,
            }
        )

    async def stop_container(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace(request)
        # Beyond SameSite=Lax: a form posted from another site (even a sibling subdomain,
        # such as a web endpoint) names that site as its origin.
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            raise web.HTTPForbidden(text="stopping a container is only allowed from the dashboard itself")
        task_id = request.match_info["task_id"]
        if queries.task(self.state.engine, workspace_id, task_id) is None:
            raise web.HTTPNotFound()
        running = self.state.scheduler.container(task_id)
        if running is not None:
            self.state.scheduler.request_stop(running, "stopped from the dashboard", interrupt=True)
        raise web.HTTPSeeOther(f"{PREFIX}/containers/{task_id}")

    async def images_page(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace(request)
        return self._render(
            request, "images.html", workspace_id, images=queries.images(self.state.engine, workspace_id)
        )

    async def image_page(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace(request)
        log = queries.build_log(self.state.engine, workspace_id, request.match_info["image_id"])
        if log is None:
            raise web.HTTPNotFound(text=f"No image {request.match_info['image_id']} in this workspace.")
        return self._render(
            request, "image.html", workspace_id, image_id=request.match_info["image_id"], log=log
        )

    async def storage_page(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace(request)
        return self._render(
            request, "storage.html", workspace_id, objects=queries.storage(self.state.engine, workspace_id)
        )

    async def volume_page(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace(request)
        files = queries.volume_files(self.state.engine, workspace_id, request.match_info["volume_id"])
        if files is None:
            raise web.HTTPNotFound(text=f"No volume {request.match_info['volume_id']} in this workspace.")
        return self._render(
            request, "volume.html", workspace_id, volume_id=request.match_info["volume_id"], files=files
        )

    async def usage_page(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace(request)
        now = time.time()
        start = now - USAGE_DAYS * 86400
        usages = self.state.usage.between(workspace_id, start, now)
        by_day: dict[float, Decimal] = defaultdict(Decimal)
        by_app: dict[str, Decimal] = defaultdict(Decimal)
        for (app_id, day), by_resource in billing.costs(usages, self.state.rates, start, now, "d").items():
            cost = sum(by_resource.values(), Decimal(0))
            by_day[day] += cost
            by_app[app_id] += cost
        days = [
            (queries.when(day)[:10], float(by_day.get(day, 0)))
            for day in billing.interval_starts(start, now, "d")
        ]
        apps = {app["id"]: app["name"] for app in queries.apps(self.state.engine, workspace_id)}
        return self._render(
            request,
            "usage.html",
            workspace_id,
            chart=charts.bars(days, self.state.rates.currency, f"Cost per day, last {USAGE_DAYS} days"),
            apps=sorted(
                ((apps.get(app_id, app_id), cost) for app_id, cost in by_app.items()), key=lambda row: -row[1]
            ),
            currency=self.state.rates.currency,
            containers=len(usages),
            cpu_hours=sum(u.cpu_seconds for u in usages) / 3600,
        )

    async def sandboxes_page(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace(request)
        return self._render(request, "sandboxes.html", workspace_id)
