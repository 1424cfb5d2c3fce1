"""`modal dashboard`: a short-lived sign-in link to the caller's workspace's dashboard."""

from __future__ import annotations

from modal_proto import api_pb2

from homeport.server.context import RequestContext
from homeport.server.rpc import handler


@handler("WorkspaceDashboardUrlGet")
async def workspace_dashboard_url_get(
    context: RequestContext, request: api_pb2.WorkspaceDashboardUrlRequest
) -> api_pb2.WorkspaceDashboardUrlResponse:
    token = context.state.dashboard_signer.sign_in_token(context.workspace_id)
    return api_pb2.WorkspaceDashboardUrlResponse(
        url=f"{context.state.settings.blob_base_url}/dashboard/signin?t={token}"
    )
