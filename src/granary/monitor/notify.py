"""Webhook notifications with Alertmanager's payload: grouping, silences, repeat intervals, resolved notices."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from granary.monitor.events import EventLog

log = logging.getLogger(__name__)


def _iso(ts: float | None) -> str:
    if ts is None:
        return "0001-01-01T00:00:00Z"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(kw_only=True, frozen=True)
class WebhookConfig:
    """One webhook receiver.

    Attributes:
        url: where to POST (an Alertmanager webhook receiver, a chat bridge, a pager).
        name: receiver name in the payload.
        group_by: labels that split events into notifications (``detector`` is a label here).
        repeat_interval_s: resend a still-firing group after this long.
        send_resolved: also notify when a group's events resolve.
        timeout_s: HTTP timeout; a receiver that hangs costs at most this per group.
    """

    url: str
    name: str = "webhook"
    group_by: tuple[str, ...] = ("detector", "node")
    repeat_interval_s: float = 4 * 3600.0
    send_resolved: bool = True
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must start with http:// or https://, got {self.url!r}")
        if self.repeat_interval_s <= 0 or self.timeout_s <= 0:
            raise ValueError("repeat_interval_s and timeout_s must be > 0")


def alert_of(event: dict[str, Any]) -> dict[str, Any]:
    """One event in Alertmanager's webhook ``alerts`` item format."""
    labels = {"alertname": event["detector"], "severity": event["severity"], **event["labels"]}
    return {"status": event["state"], "labels": labels,
            "annotations": {"summary": event["summary"], "runbook_url": event["runbook"],
                            "evidence": json.dumps(event["evidence"], default=str)[:4000],
                            "action": event.get("action") or ""},
            "startsAt": _iso(event["starts_at"]), "endsAt": _iso(event.get("ends_at")),
            "generatorURL": "", "fingerprint": event["fingerprint"]}


class WebhookNotifier:
    """Sends grouped notifications for the events in the catalog.

    Args:
        events: the event log.
        config: the receiver.
    """

    def __init__(self, events: EventLog, config: WebhookConfig) -> None:
        self.events = events
        self.config = config
        self.sent: dict[str, tuple[float, frozenset[str]]] = {}  # group key -> (last sent, fingerprints firing)
        self.failures = 0

    def _group(self, event: dict[str, Any]) -> tuple[str, dict[str, str]]:
        full = {"detector": event["detector"], **event["labels"]}
        labels = {k: full[k] for k in self.config.group_by if k in full}
        return json.dumps(labels, sort_keys=True), labels

    def notify(self, now: float, *, lookback_s: float = 3600.0) -> int:
        """Send what is due; returns the number of notifications delivered."""
        silences = self.events.silences(now)
        events = [e for e in self.events.list(since=now - lookback_s)
                  if not EventLog.silenced(e["labels"], e["detector"], silences)]
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        glabels: dict[str, dict[str, str]] = {}
        for e in events:
            key, labels = self._group(e)
            groups[key].append(e)
            glabels[key] = labels
        delivered = 0
        for key, evs in groups.items():
            firing = frozenset(e["fingerprint"] for e in evs if e["state"] == "firing")
            last = self.sent.get(key)
            resolved_new = [e for e in evs if e["state"] == "resolved" and (e["notified_at"] or 0) < e["ends_at"]]
            due = bool(firing) and (last is None or bool(firing - last[1])
                                    or now - last[0] >= self.config.repeat_interval_s)
            due = due or (self.config.send_resolved and bool(resolved_new) and last is not None)
            if not due:
                continue
            batch = [e for e in evs if e["state"] == "firing"] + (resolved_new if self.config.send_resolved else [])
            if self._post(key, glabels[key], batch):
                delivered += 1
                self.sent[key] = (now, firing)
                self.events.mark_notified([e["id"] for e in batch], now)
        return delivered

    def _post(self, key: str, group_labels: dict[str, str], batch: list[dict[str, Any]]) -> bool:
        alerts = [alert_of(e) for e in batch]
        common = dict.fromkeys(alerts[0]["labels"]) if alerts else {}
        common_labels = {k: alerts[0]["labels"][k] for k in common
                         if all(a["labels"].get(k) == alerts[0]["labels"][k] for a in alerts)}
        payload = {"version": "4", "groupKey": hashlib.sha1(key.encode()).hexdigest()[:16],
                   "truncatedAlerts": 0, "receiver": self.config.name,
                   "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
                   "groupLabels": group_labels, "commonLabels": common_labels, "commonAnnotations": {},
                   "externalURL": "", "alerts": alerts}
        req = urllib.request.Request(self.config.url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout_s) as resp:
                resp.read()
            return True
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            self.failures += 1
            log.warning("webhook %s failed (%s); will retry at the next evaluation", self.config.url, exc)
            return False
