"""SQLAlchemy Core tables of the scheduler's durable state (schema owned by migration sched_0001)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

nodes = sa.Table(
    "sched_nodes",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("gpus", sa.Integer, nullable=False),
    sa.Column("cpus", sa.Float, nullable=False),
    sa.Column("memory_bytes", sa.BigInteger, nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("drain_requested", sa.Boolean, nullable=False),
    sa.Column("last_heartbeat", sa.Float, nullable=False),
    sa.Column("utilization", sa.Float, nullable=False),
    sa.Column("cached", sa.Text, nullable=False),
    sa.Column("agent_pid", sa.Integer, nullable=True),
    sa.Column("registered_at", sa.Float, nullable=False),
)

jobs = sa.Table(
    "sched_jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("accepted", sa.Boolean, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("submit_time", sa.Float, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("node_restarts", sa.Integer, nullable=False),
    sa.Column("job_restarts", sa.Integer, nullable=False),
    sa.Column("preemptions", sa.Integer, nullable=False),
    sa.Column("attained_gpu_s", sa.Float, nullable=False),
    sa.Column("run_s", sa.Float, nullable=False),
    sa.Column("not_before", sa.Float, nullable=False),
    sa.Column("resumed_step", sa.BigInteger, nullable=True),
    sa.Column("first_start", sa.Float, nullable=True),
    sa.Column("finish_time", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)

events = sa.Table(
    "sched_events",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("from_state", sa.String(16), nullable=False),
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("correlation_id", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

attempts = sa.Table(
    "sched_attempts",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("replica", sa.Integer, primary_key=True),
    sa.Column("node", sa.String(128), nullable=False),
    sa.Column("executor", sa.String(16), nullable=False),
    sa.Column("gpu_ids", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("acked", sa.String(16), nullable=False),
    sa.Column("stop_requested", sa.Boolean, nullable=False),
    sa.Column("stop_reason", sa.Text, nullable=False),
    sa.Column("grace_s", sa.Float, nullable=False),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("external_id", sa.String(128), nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("resumed_step", sa.BigInteger, nullable=True),
    sa.Column("checkpoint", sa.Text, nullable=True),
    sa.Column("log_path", sa.Text, nullable=True),
    sa.Column("usage", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("ended_at", sa.Float, nullable=True),
)

# Attempt states: assigned (by the controller) -> launching -> running -> exited | lost.
# ``acked`` is the last attempt state the controller has applied to its state machine.
ATTEMPT_OPEN = ("assigned", "launching", "running")

# Restart and evacuation requests (schema owned by migration sched_0002): the watcher (granary.monitor) and
# operators insert them; the controller acts on pending ones in its next tick and records the outcome.
requests = sa.Table(
    "sched_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),  # restart (a job) | evacuate (a node)
    sa.Column("target", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("requested_by", sa.String(128), nullable=False),
    sa.Column("requested_at", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | done | refused
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("done_at", sa.Float, nullable=True),
    sa.Index("ix_sched_requests_state", "state"),
)
REQUEST_KINDS = ("restart", "evacuate")
