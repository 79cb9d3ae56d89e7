"""The floor of benchmarks/server_bench.py: a bare FastAPI app on uvicorn answering each GET with a JSON body held
in memory, the same bytes granary server answered for that endpoint, with the same workers, under the same client.

    .venv/bin/python benchmarks/server_floor.py --bodies DIR --port 8471 [--workers 2]

``DIR`` holds ``0.json``, ``1.json``, ...; ``GET /body/{i}`` answers file ``i``. No authentication, no database,
no middleware: what serving those bytes with this stack costs on this machine, so granary server's figures can be
read as a ratio to it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response


def create() -> FastAPI:
    """The floor app over the bodies in ``GRANARY_FLOOR_BODIES``."""
    folder = Path(os.environ["GRANARY_FLOOR_BODIES"])
    bodies = {int(p.stem): p.read_bytes() for p in folder.glob("*.json")}
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/body/{index}")
    async def body(index: int) -> Response:
        return Response(bodies[index], media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bodies", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    os.environ["GRANARY_FLOOR_BODIES"] = str(args.bodies.resolve())
    uvicorn.run("server_floor:create", factory=True, app_dir=str(Path(__file__).parent), host="127.0.0.1",
                port=args.port, workers=args.workers, log_level="warning")


if __name__ == "__main__":
    main()
