"""Push metrics from a job to its node agent (short jobs and training ranks; no Pushgateway needed)."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:9464"


def push(metrics: Mapping[str, float], *, labels: Mapping[str, str] | None = None, job: str | None = None,
         url: str | None = None, timeout_s: float = 2.0) -> bool:
    """Send metric values to the node agent; returns whether it accepted them.

    A monitoring outage never breaks the job: failures are logged and reported as False.

    Args:
        metrics: ``{name: value}``, names from the contract (``granary_train_step``, ...).
        labels: bounded labels such as ``{"rank": "0"}``.
        job: the job id (default ``GRANARY_JOB_ID`` from the scheduler's environment).
        url: the agent (default ``GRANARY_MONITOR_URL``, else http://127.0.0.1:9464).
        timeout_s: give up after this long.
    """
    base = url or os.environ.get("GRANARY_MONITOR_URL") or DEFAULT_URL
    payload = {"job": job or os.environ.get("GRANARY_JOB_ID"), "labels": dict(labels or {}),
               "metrics": dict(metrics)}
    req = urllib.request.Request(base.rstrip("/") + "/push", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            result = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("metrics push to %s failed: %s", base, exc)
        return False
    if result.get("rejected"):
        log.warning("the agent refused some metrics: %s", result["rejected"])
    return bool(result.get("accepted"))


def push_curate_steps(steps: Mapping[str, Any], *, job: str, url: str | None = None) -> bool:
    """Push a curation run's per-step totals (``granary_curate_*``) once, at the end of the run.

    Args:
        steps: step name -> stats with ``docs_in``, ``docs_out`` and ``seconds`` (``CurateResult.steps``).
        job: the run's job label (the scheduler's job id, or ``curate:<output dataset>``).
        url: the agent (default ``GRANARY_MONITOR_URL``).
    """
    ok = True
    for name, s in steps.items():
        ok &= push({"granary_curate_documents_total": float(s.docs_in),
                    "granary_curate_dropped_total": float(max(0, s.docs_in - s.docs_out)),
                    "granary_curate_step_seconds_total": float(s.seconds)},
                   labels={"step": name}, job=job, url=url)
    return ok
