"""Database schema (SQLAlchemy Core). Migrations in `migrations/` must match it."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), sa.ForeignKey("workspaces.id"), nullable=False),
    sa.Column("secret_hash", sa.String(128), nullable=False),
    sa.Column("label", sa.String(200), nullable=False, server_default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    # "api": calls the API; "proxy": only passes `requires_proxy_auth` web endpoints.
    sa.Column("scope", sa.String(16), nullable=False, server_default="api"),
)

environments = sa.Table(
    "environments",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), sa.ForeignKey("workspaces.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("workspace_id", "name"),
)

apps = sa.Table(
    "apps",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), sa.ForeignKey("workspaces.id"), nullable=False),
    sa.Column("environment_name", sa.String(200), nullable=False),
    sa.Column("description", sa.String(500), nullable=False, server_default=""),
    sa.Column("name", sa.String(200), nullable=True),  # set once deployed
    sa.Column("state", sa.Integer, nullable=False),  # api_pb2.AppState
    sa.Column("client_id", sa.String(80), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("stopped_at", sa.Float, nullable=True),
    sa.Column("last_heartbeat_at", sa.Float, nullable=True),
    sa.Column("deployed_at", sa.Float, nullable=True),
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tags", sa.Text, nullable=False, server_default="{}"),  # JSON {name: value}
)

# A deployed name points at exactly one live app per (workspace, environment).
deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("environment_name", sa.String(200), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("app_id", sa.String(40), sa.ForeignKey("apps.id"), nullable=False),
)

functions = sa.Table(
    "functions",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("app_id", sa.String(40), sa.ForeignKey("apps.id"), nullable=False, index=True),
    sa.Column("tag", sa.String(300), nullable=False),
    sa.Column("definition", sa.LargeBinary, nullable=True),  # api_pb2.Function, serialized
    sa.Column("handle_metadata", sa.LargeBinary, nullable=True),  # api_pb2.FunctionHandleMetadata
    sa.Column("parent_id", sa.String(40), nullable=True),  # set for bound (parametrized) functions
    sa.Column("bound_params", sa.LargeBinary, nullable=True),
    sa.Column("options", sa.LargeBinary, nullable=True),  # api_pb2.FunctionOptions of a bound function
    sa.Column("schedule_next_at", sa.Float, nullable=True),
    # min_containers or buffer_containers set: the scheduler keeps containers for it even without inputs.
    sa.Column("keep_warm", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False),
    # gpu=[...] fallbacks, in rank order: JSON list of {"model", "count"}
    sa.Column("gpu_options", sa.Text, nullable=True),
)

classes = sa.Table(
    "classes",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("app_id", sa.String(40), sa.ForeignKey("apps.id"), nullable=False, index=True),
    sa.Column("tag", sa.String(300), nullable=False),
    sa.Column("function_id", sa.String(40), nullable=True),
    sa.Column("handle_metadata", sa.LargeBinary, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

mounts = sa.Table(
    "mounts",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=True),  # NULL: global
    sa.Column("name", sa.String(300), nullable=True),
    sa.Column("files", sa.LargeBinary, nullable=False),  # JSON list of {path, sha256, mode}
    sa.Column("created_at", sa.Float, nullable=False),
)

# Mount file contents, stored once per sha256 in the blob store.
mount_contents = sa.Table(
    "mount_contents",
    metadata,
    sa.Column("sha256_hex", sa.String(64), primary_key=True),
    sa.Column("blob_id", sa.String(40), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
)

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=True),
    sa.Column("size", sa.BigInteger, nullable=True),
    sa.Column("md5_base64", sa.String(40), nullable=True),
    sa.Column("complete", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False, index=True),
    sa.Column("definition", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),  # api_pb2.GenericResult.GenericStatus
    sa.Column("exception", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    # The built result: layer refs bottom first (JSON), the image config (JSON), the top
    # layer's cache key (what images built FROM this one chain from).
    sa.Column("layers", sa.Text, nullable=True),
    sa.Column("config", sa.Text, nullable=True),
    sa.Column("top_key", sa.String(64), nullable=True),
    sa.Column("built_at", sa.Float, nullable=True),
    sa.Column("build_seconds", sa.Float, nullable=True),
)

# The build log of an image, in the order it was written: what ImageJoinStreaming replays.
image_build_logs = sa.Table(
    "image_build_logs",
    metadata,
    sa.Column("image_id", sa.String(40), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("data", sa.Text, nullable=False),
)

function_calls = sa.Table(
    "function_calls",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("function_id", sa.String(40), nullable=False, index=True),
    sa.Column("app_id", sa.String(40), nullable=False),
    sa.Column("invocation_type", sa.Integer, nullable=False),
    sa.Column("call_type", sa.Integer, nullable=False),
    sa.Column("cancelled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False),
)

inputs = sa.Table(
    "inputs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("function_call_id", sa.String(40), nullable=False, index=True),
    sa.Column("function_id", sa.String(40), nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),  # api_pb2.FunctionInput
    # pending -> claimed -> done; a claimed input whose container dies goes back to pending
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("task_id", sa.String(40), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("not_before", sa.Float, nullable=False, server_default="0"),
    sa.Column("claimed_at", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("blob_id", sa.String(40), nullable=True, index=True),  # the argument blob, while it is needed
    sa.Column("finished_at", sa.Float, nullable=True),  # when its final result was stored
    sa.Column("status", sa.Integer, nullable=True),  # that result's GenericResult status
    # Claiming takes the oldest pending inputs of a function: filter and order from one index.
    sa.Index("ix_inputs_claim_order", "function_id", "state", "created_at"),
    sa.Index("ix_inputs_task", "task_id"),
    sa.Index("ix_inputs_function_created", "function_id", "created_at"),  # call listings, stats
    # The scheduler's passes: the queue's counts per function, the next retry's time; only
    # pending inputs are read, however many finished ones the table holds.
    sa.Index("ix_inputs_runnable", "state", "not_before", "function_id"),
)

outputs = sa.Table(
    "outputs",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("function_call_id", sa.String(40), nullable=False, index=True),
    sa.Column("input_id", sa.String(40), nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("result", sa.LargeBinary, nullable=False),  # api_pb2.GenericResult
    sa.Column("data_format", sa.Integer, nullable=False),
    sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("blob_id", sa.String(40), nullable=True, index=True),  # the result blob
)

# Generator values and other per-call data channels (data_out from the container).
call_data = sa.Table(
    "call_data",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("function_call_id", sa.String(40), nullable=False, index=True),
    sa.Column("direction", sa.String(4), nullable=False),  # "out" | "in"
    sa.Column("chunk", sa.LargeBinary, nullable=False),  # api_pb2.DataChunk
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("chunk_index", sa.BigInteger, nullable=False, server_default="0"),  # DataChunk.index
    sa.Column("blob_id", sa.String(40), nullable=True, index=True),  # the chunk's blob
    sa.Index("ix_call_data_cursor", "function_call_id", "direction", "chunk_index"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("app_id", sa.String(40), nullable=False, index=True),
    sa.Column("function_id", sa.String(40), nullable=False, index=True),
    sa.Column("secret_hash", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # starting | running | stopped
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("stop_reason", sa.String(300), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("stopped_at", sa.Float, nullable=True),
    sa.Column("node_id", sa.String(200), nullable=True),  # the node that runs it
    sa.Column(
        "server_id", sa.String(40), nullable=True, index=True
    ),  # the control-plane replica that owns it
)

# Control-plane replicas serving one database; a replica not seen for a while is gone,
# and another takes over what it owned (server/replicas.py).
servers = sa.Table(
    "servers",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("address", sa.String(300), nullable=False),  # its gRPC address
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
)

logs = sa.Table(
    "logs",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("app_id", sa.String(40), nullable=False, index=True),
    sa.Column("task_id", sa.String(40), nullable=True),
    sa.Column("function_id", sa.String(40), nullable=True),
    sa.Column("file_descriptor", sa.Integer, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("timestamp", sa.Float, nullable=False, index=True),
)

# Server-wide values shared by every node (e.g. the key that signs blob URLs).
server_settings = sa.Table(
    "server_settings",
    metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Named and ephemeral storage objects (Dict, Queue, Secret, Volume) share one table:
# a name is unique per (workspace, environment, kind); ephemeral objects live while their
# creator heartbeats, app-owned ones while their app runs.
storage_objects = sa.Table(
    "storage_objects",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # dict | queue | secret | volume
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("environment_name", sa.String(200), nullable=False),
    sa.Column("name", sa.String(200), nullable=True),
    sa.Column("owner_app_id", sa.String(40), nullable=True),
    sa.Column("ephemeral", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("last_heartbeat_at", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=True),
    sa.Index("ix_storage_objects_name", "workspace_id", "environment_name", "kind", "name", unique=True),
)

dict_entries = sa.Table(
    "dict_entries",
    metadata,
    sa.Column("dict_id", sa.String(40), primary_key=True),
    sa.Column("key_hash", sa.String(64), primary_key=True),  # sha256 of the serialized key
    sa.Column("key", sa.LargeBinary, nullable=False),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

queue_items = sa.Table(
    "queue_items",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("queue_id", sa.String(40), nullable=False),
    sa.Column("partition_key", sa.LargeBinary, nullable=False),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("ix_queue_items_partition", "queue_id", "partition_key", "seq"),
)

# Secret values, encrypted with the server's secret key (never stored in clear).
secret_values = sa.Table(
    "secret_values",
    metadata,
    sa.Column("secret_id", sa.String(40), primary_key=True),
    sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    sa.Column("keys", sa.Text, nullable=False),  # JSON list of variable names (not secret)
)

# A Volume's committed state: one row per file or directory; file contents live in the
# content store, addressed by sha256.
volume_files = sa.Table(
    "volume_files",
    metadata,
    sa.Column("volume_id", sa.String(40), primary_key=True),
    sa.Column("path", sa.String(4096), primary_key=True),  # relative, no leading "/"
    sa.Column("is_dir", sa.Boolean, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("mode", sa.Integer, nullable=False, server_default="420"),
    sa.Column("mtime", sa.Float, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=True),
)

# Web endpoint hostnames: "<workspace>--<label>" -> the function (and class method) serving it.
web_endpoints = sa.Table(
    "web_endpoints",
    metadata,
    sa.Column("host_label", sa.String(300), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("app_id", sa.String(40), nullable=False, index=True),
    sa.Column("function_id", sa.String(40), nullable=False),
    sa.Column("method_name", sa.String(200), nullable=False, server_default=""),
    sa.Column("requires_proxy_auth", sa.Boolean, nullable=False, server_default=sa.false()),
)

# The machines that run containers, as their node agents last reported them.
nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),  # the node's name (HOMEPORT_NODE_ID in its containers)
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("cpu_count", sa.Integer, nullable=False),
    sa.Column("cpu_busy", sa.Float, nullable=False),  # fraction of all cores
    sa.Column("memory_budget_mib", sa.Integer, nullable=False),
    sa.Column("memory_reserved_mib", sa.Integer, nullable=False),
    sa.Column("gpus", sa.Text, nullable=False),  # JSON list of models, by device index
    sa.Column("gpus_busy", sa.Integer, nullable=False),
    sa.Column("containers", sa.Integer, nullable=False),
)

# What each container used and reserved, from its start to its stop (billing, usage pages).
usage = sa.Table(
    "usage",
    metadata,
    sa.Column("task_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("app_id", sa.String(40), nullable=False),
    sa.Column("function_id", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # function | build
    sa.Column("node_id", sa.String(200), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("stopped_at", sa.Float, nullable=False),
    sa.Column("cpu_seconds", sa.Float, nullable=False),  # CPU time used (cgroup accounting)
    sa.Column("cpu_reserved_cores", sa.Float, nullable=False),  # cpu= (0: none asked)
    sa.Column("memory_reserved_mib", sa.Integer, nullable=False),
    sa.Column("memory_peak_mib", sa.Float, nullable=False),
    sa.Column("gpu_type", sa.String(40), nullable=False),  # "" without GPUs
    sa.Column("gpu_count", sa.Integer, nullable=False),
    sa.Index("ix_usage_workspace_started", "workspace_id", "started_at"),
)

# Every deployment of an app (`modal app history`): versions count up from 1 per app.
app_deployments = sa.Table(
    "app_deployments",
    metadata,
    sa.Column("app_id", sa.String(40), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("deployed_at", sa.Float, nullable=False),
    sa.Column("client_version", sa.String(40), nullable=False),
    sa.Column("deployed_by", sa.String(200), nullable=False),  # the id of the token that deployed it
)

# modal.Sandbox: a running sandbox has no result; its task id names its container.
sandboxes = sa.Table(
    "sandboxes",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("app_id", sa.String(40), nullable=False, index=True),
    sa.Column("environment_name", sa.String(200), nullable=False),
    sa.Column("name", sa.String(200), nullable=True),  # unique within its app
    sa.Column("tags", sa.Text, nullable=False),  # JSON object
    sa.Column("task_id", sa.String(40), nullable=False, unique=True),
    sa.Column("idempotency_key", sa.String(100), nullable=True, unique=True),  # a retried create
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("result", sa.LargeBinary, nullable=True),  # api_pb2.GenericResult once finished
    sa.Column("finished_at", sa.Float, nullable=True),
    # Where it runs: any replica reaches it through its node (cluster mode); the replica
    # that started it watches its end, and a replica that is gone has its sandboxes ended.
    sa.Column("image_id", sa.String(40), nullable=True),
    sa.Column("node_id", sa.String(200), nullable=True),
    sa.Column("server_id", sa.String(40), nullable=True),
    sa.UniqueConstraint("app_id", "name", name="uq_sandboxes_app_name"),
)
