"""`granary server`: serve the HTTP API and the web dashboard (thin over granary.api)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import typer

from granary.cli.output import console


def register(app: typer.Typer) -> None:
    """Add the ``server`` command to the main app."""

    @app.command("server")
    def server(
        host: str = typer.Option(None, help="Address to bind (default 127.0.0.1; GRANARY_SERVER_HOST)."),
        port: int = typer.Option(None, help="Port (default 8470; GRANARY_SERVER_PORT)."),
        auth: str = typer.Option(None, help="local (the local admin, loopback only) or tokens (GRANARY_AUTH)."),
        tls_cert: Path = typer.Option(None, "--tls-cert", help="PEM certificate: serve HTTPS."),
        tls_key: Path = typer.Option(None, "--tls-key", help="PEM key of --tls-cert."),
        cors: str = typer.Option(None, help="Comma-separated origins allowed to call the API from a browser."),
        root_path: str = typer.Option(None, "--root-path", help="URL prefix when behind a proxy under a sub-path."),
        workers: int = typer.Option(None, min=1, help="Worker processes (default: one per CPU core)."),
    ) -> None:
        """Serve the REST API (/api/v1, OpenAPI at /api/v1/docs) and the dashboard (/ui/)."""
        try:
            import uvicorn
        except ImportError:
            from granary.errors import MissingDependencyError

            raise MissingDependencyError("uvicorn", "server") from None
        from granary.api.config import ServerSettings

        cors_origins = None if cors is None else tuple(o.strip() for o in cors.split(",") if o.strip())
        cfg = ServerSettings.from_env(host=host, port=port, auth=auth, tls_cert=tls_cert, tls_key=tls_key,
                                      cors_origins=cors_origins, root_path=root_path)
        scheme = "https" if cfg.tls_cert else "http"
        workers = workers or cpu_cores()
        console.print(f"granary server on {scheme}://{cfg.host}:{cfg.port}/ (dashboard /ui/, API /api/v1, "
                      f"auth {cfg.auth}, {workers} worker{'s' if workers > 1 else ''})")
        _export(cfg)
        _migrate()  # once, before the workers start (each then finds the schema up to date)
        metrics_dir = _metrics_dir() if workers > 1 else None
        try:
            _run(uvicorn, cfg, workers)
        finally:
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)


def _run(uvicorn: Any, cfg: Any, workers: int) -> None:
    uvicorn.run("granary.api.serve:app", factory=True, host=cfg.host, port=cfg.port, workers=workers,
                    ssl_certfile=str(cfg.tls_cert) if cfg.tls_cert else None,
                    ssl_keyfile=str(cfg.tls_key) if cfg.tls_key else None, log_level="warning",
                    proxy_headers=True, forwarded_allow_ips="127.0.0.1")


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _migrate() -> None:
    from granary.catalog import open_catalog
    from granary.config import Settings

    open_catalog(Settings.from_env().catalog_url).dispose()


def _metrics_dir() -> str | None:
    """Give the workers one Prometheus multiprocess directory (PROMETHEUS_MULTIPROC_DIR), so /metrics answers the
    sum over every worker whichever one serves it. Returns the directory to remove at exit (None: the caller's)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        for stale in Path(given).glob("*.db"):  # counts of an earlier run would be added to this one's
            stale.unlink()
        return None
    made = tempfile.mkdtemp(prefix="granary-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made


def _export(cfg: object) -> None:
    """Hand the resolved settings to the worker processes through the environment."""
    from granary.api.config import ServerSettings

    assert isinstance(cfg, ServerSettings)
    os.environ.update({"GRANARY_SERVER_HOST": cfg.host, "GRANARY_SERVER_PORT": str(cfg.port),
                       "GRANARY_AUTH": cfg.auth, "GRANARY_SERVER_CORS": ",".join(cfg.cors_origins),
                       "GRANARY_SERVER_ROOT_PATH": cfg.root_path})
    if cfg.tls_cert and cfg.tls_key:
        os.environ.update({"GRANARY_SERVER_TLS_CERT": str(cfg.tls_cert), "GRANARY_SERVER_TLS_KEY": str(cfg.tls_key)})
