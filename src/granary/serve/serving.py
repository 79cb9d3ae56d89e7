"""A serving job's side of discovery: run the model server, register it once ready, renew, withdraw at the end."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from granary.serve.errors import GatewayConfigError

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for servers that cannot report the port they bound)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServingEndpoint:
    """Runs a model server (vLLM, SGLang, TGI, the simulator...) and keeps it registered in the catalog.

    Inside a scheduler job the registration names the job (``GRANARY_JOB_ID``), so gateways drop the endpoint as
    soon as the scheduler records the job's end, even when the process was killed before it could withdraw.

    Args:
        model: the model name requests carry.
        command: the server's argv; ``{port}`` is replaced by the port.
        port: the server's port (None: a free one, substituted for ``{port}``).
        name: backend name (default ``<job id>-<replica>`` or ``<host>-<port>``).
        host: the address gateways use.
        health_path: answers 2xx once the server is ready.
        weight: backend weight.
        lease_s: registration lapses this long after the last heartbeat.
        ready_timeout_s: give up when not ready by then.
        drain_s: on stop, wait this long between withdrawing and stopping the server.
    """

    def __init__(self, *, model: str, command: Sequence[str], port: int | None = None, name: str | None = None,
                 host: str = "127.0.0.1", health_path: str = "/health", weight: float = 1.0, lease_s: float = 15.0,
                 ready_timeout_s: float = 600.0, drain_s: float = 5.0) -> None:
        if not command:
            raise GatewayConfigError("endpoint command", "is empty: give the model server's command after --")
        if port is None and not any("{port}" in c for c in command):
            raise GatewayConfigError("endpoint port", "is missing: pass --port or write {port} in the command")
        self.port = port if port is not None else free_port()
        self.command = [c.replace("{port}", str(self.port)) for c in command]
        self.model = model
        self.host = host
        job = os.environ.get("GRANARY_JOB_ID")
        self.job_id = job or None
        replica = os.environ.get("GRANARY_REPLICA", "0")
        self.name = name or (f"{job}-{replica}" if job else f"{socket.gethostname()}-{self.port}")[:64]
        self.url = f"http://{host}:{self.port}"
        self.health_path = health_path
        self.weight = weight
        self.lease_s = lease_s
        self.ready_timeout_s = ready_timeout_s
        self.drain_s = drain_s
        self._stop = threading.Event()

    def request_stop(self) -> None:
        """Ask :meth:`run` to withdraw and stop (safe from a signal handler)."""
        self._stop.set()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=2) as resp:
                return 200 <= int(resp.status) < 300
        except (urllib.error.URLError, OSError):
            return False

    def run(self) -> int:
        """Start the server, register when ready, renew until it exits or a stop is requested; returns its code."""
        from granary.catalog import open_catalog
        from granary.config import Settings
        from granary.serve.endpoints import EndpointBook

        book = EndpointBook(open_catalog(Settings.from_env().catalog_url))
        proc = subprocess.Popen(self.command)
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready():
            if proc.poll() is not None or self._stop.is_set() or time.monotonic() > deadline:
                log.error("model server %s did not become ready; not registering", self.url)
                return self._end(proc, 1)
            time.sleep(0.2)
        book.register(self.model, self.name, self.url, weight=self.weight, job_id=self.job_id, lease_s=self.lease_s)
        log.warning("registered %s for model %s as %s", self.url, self.model, self.name)
        try:
            while proc.poll() is None and not self._stop.wait(min(self.lease_s / 3, 2.0)):
                if not book.heartbeat(self.model, self.name):  # withdrawn by someone: register again
                    book.register(self.model, self.name, self.url, weight=self.weight, job_id=self.job_id,
                                  lease_s=self.lease_s)
        finally:
            book.withdraw(self.model, self.name)
        if proc.poll() is None:
            time.sleep(self.drain_s)  # gateways see the withdrawal and drain before the server goes
        return self._end(proc, proc.returncode or 0)

    @staticmethod
    def _end(proc: subprocess.Popen[bytes], code: int) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode if proc.returncode not in (None, -signal.SIGTERM) else code
