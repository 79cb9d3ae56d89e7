"""Events, silences and webhook notifications against a real local HTTP receiver; the watcher on stored series
(missing data and clock skew are reported, never acted on)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from granary.catalog import Catalog, open_catalog
from granary.monitor.events import EventLog, Finding
from granary.monitor.notify import WebhookConfig, WebhookNotifier
from granary.monitor.series import SeriesStore
from granary.monitor.watcher import Watcher, WatcherConfig
from granary.sched.journal import list_requests


class Receiver:
    """A webhook receiver on a free port that records payloads; ``mode`` = ok | fail | hang."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []  # type: ignore[type-arg]
        self.mode = "ok"
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.mode == "hang":
                    time.sleep(1.5)
                if outer.mode == "fail":
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.payloads.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Catalog:
    if request.param == "sqlite":
        return open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    from tests.conftest import fresh_pg_database

    return open_catalog(fresh_pg_database(request.getfixturevalue("pg_url")))


def finding(node: str, detector: str = "xid") -> Finding:
    return Finding(detector, "critical", {"node": node, "gpu": "0"}, f"GPU 0 on {node} reported an XID",
                   {"count": 1})


def test_events_fire_update_and_resolve(catalog: Catalog) -> None:
    log = EventLog(catalog)
    new, resolved = log.sync([finding("n1"), finding("n2")], 10.0, actions={finding("n1").fingerprint: "drained"})
    assert len(new) == 2 and resolved == []
    assert log.sync([finding("n1")], 20.0) == ([], [new[1]])
    events = {e["labels"]["node"]: e for e in log.list()}
    assert (events["n1"]["state"], events["n1"]["action"], events["n1"]["updated_at"]) == ("firing", "drained", 20.0)
    assert (events["n2"]["state"], events["n2"]["ends_at"]) == ("resolved", 20.0)
    assert events["n1"]["runbook"] == "docs/watch.md#xid"


def test_webhook_groups_repeats_resolves_and_honours_silences(catalog: Catalog, receiver: Receiver) -> None:
    log = EventLog(catalog)
    now = time.time()
    log.sync([finding("n1"), finding("n2")], now)
    notifier = WebhookNotifier(log, WebhookConfig(url=receiver.url, repeat_interval_s=100.0))
    assert notifier.notify(now) == 2  # grouped by detector and node: two groups
    p = receiver.payloads[0]
    assert p["version"] == "4" and p["status"] == "firing" and p["receiver"] == "webhook"
    assert p["groupLabels"]["detector"] == "xid" and p["alerts"][0]["labels"]["alertname"] == "xid"
    assert p["alerts"][0]["annotations"]["runbook_url"] == "docs/watch.md#xid"
    assert notifier.notify(now + 10) == 0  # nothing new, repeat interval not reached
    assert notifier.notify(now + 101) == 2  # repeat
    log.silence({"node": "n2"}, 1000.0, now=now)
    log.sync([finding("n1")], now + 102)  # n2 resolves, but it is silenced
    assert notifier.notify(now + 103) == 0
    log.sync([], now + 104)  # n1 resolves
    assert notifier.notify(now + 105) == 1
    assert receiver.payloads[-1]["status"] == "resolved"
    assert receiver.payloads[-1]["alerts"][0]["endsAt"].startswith(time.strftime("%Y", time.gmtime(now)))
    with pytest.raises(ValueError, match="matcher"):
        log.silence({}, 10.0)


def test_failing_or_hanging_receiver_is_retried_without_crashing(catalog: Catalog, receiver: Receiver) -> None:
    log = EventLog(catalog)
    now = time.time()
    log.sync([finding("n1")], now)
    notifier = WebhookNotifier(log, WebhookConfig(url=receiver.url, timeout_s=0.5))
    receiver.mode = "fail"
    assert notifier.notify(now) == 0 and notifier.failures == 1
    receiver.mode = "hang"
    assert notifier.notify(now + 1) == 0 and notifier.failures == 2
    receiver.mode = "ok"
    assert notifier.notify(now + 2) == 1 and len(receiver.payloads) == 1
    with pytest.raises(ValueError, match="http"):
        WebhookConfig(url="ftp://x")


def test_watcher_reports_silence_and_skew_but_acts_only_on_faults(catalog: Catalog) -> None:
    from granary.sched.journal import register_node

    with catalog.write() as conn:
        from granary.sched.model import NodeSpec

        for n in ("quiet", "ahead", "broken"):
            register_node(conn, NodeSpec(name=n, gpus=1, cpus=1.0), 0.0)
    store = SeriesStore(catalog)
    now = 1000.0
    for i in range(10):
        t = now - 100 + i
        store.write([("granary_node_load1", (), 1.0)], ts=t, extra={"node": "quiet"})  # then silence
        store.write([("granary_node_load1", (), 1.0), ("granary_gpu_up", (("gpu", "0"),), float("nan"))],
                    ts=t + 100 + 60, extra={"node": "ahead"})  # a clock 60 s fast
        store.write([("granary_node_load1", (), 1.0), ("granary_gpu_up", (("gpu", "0"),), 1.0 if i < 8 else 0.0),
                     ("granary_gpu_xid_errors_total", (("gpu", "0"),), float("nan"))],
                    ts=t + 100 - 9, extra={"node": "broken"})
    watcher = Watcher(catalog, WatcherConfig(lookback_s=300.0), clock=lambda: now)
    found, actions = watcher.evaluate()
    by = {(f.detector, f.labels["node"]) for f in found}
    assert by == {("node_silent", "quiet"), ("clock_skew", "ahead"), ("gpu_lost", "broken")}
    (req,) = list_requests(catalog)
    assert (req["kind"], req["target"]) == ("evacuate", "broken")
    assert list(actions.values()) == [f"evacuation requested (request {req['id']})"]
    found, actions = watcher.evaluate(now + 1)  # still firing: no second request
    assert actions == {} and len(list_requests(catalog)) == 1


def test_a_finished_job_is_not_called_stalled(catalog: Catalog) -> None:
    from granary.sched import tables as st
    from granary.sched.journal import submit_job
    from granary.sched.model import JobSpec

    done = submit_job(catalog, JobSpec(name="done"))
    with catalog.write() as conn:
        conn.execute(st.jobs.update().where(st.jobs.c.id == done).values(state="succeeded", accepted=True))
    store = SeriesStore(catalog)
    for i in range(30):  # ten steps, then flat: the agent keeps storing the last pushed value
        for job in (done, "outside-the-scheduler"):
            store.write([("granary_train_step", (("rank", "0"),), float(min(i, 10)))], ts=float(i),
                        extra={"node": "n1", "job": job})
    found = Watcher(catalog, WatcherConfig(lookback_s=100.0), clock=lambda: 30.0).findings(30.0)
    assert [(f.detector, f.labels) for f in found] == [("stall", {"job": "outside-the-scheduler"})]


def test_the_watcher_prunes_old_samples(catalog: Catalog) -> None:
    store = SeriesStore(catalog)
    store.write([("granary_node_load1", (), 1.0)], ts=10.0, extra={"node": "a"})
    store.write([("granary_node_load1", (), 1.0)], ts=990.0, extra={"node": "a"})
    Watcher(catalog, WatcherConfig(retention_s=100.0)).evaluate(1000.0)
    (s,) = store.read("granary_node_load1")
    assert s.ts.tolist() == [990.0]
