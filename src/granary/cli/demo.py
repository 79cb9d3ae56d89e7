"""`granary demo`: the main job on embedded defaults, end to end, in about a minute."""

from __future__ import annotations

from typing import Annotated

import typer

from granary.cli.output import console, print_json, table


def demo(json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False) -> None:
    """Generate a synthetic corpus and run it through Granary (ingest, verify, and every subsystem's step)."""
    import os
    import sys

    from granary.demo.run import run
    from granary.store import open_store

    # The demo reads its own datasets for research, a purpose their policies (set by its governance step)
    # allow, so a second run reads them like the first; the jobs it starts inherit the purpose.
    os.environ.setdefault("GRANARY_PURPOSE", "research")
    store = open_store()
    out = console if not json_out else console.__class__(quiet=True)
    results = run(store, out)
    if json_out:
        print_json({title: summary | {"seconds": round(took, 2)} for title, summary, took in results})
        return
    # the server line names the executable this demo ran (`make demo` runs .venv/bin/granary)
    granary = sys.argv[0] if os.path.basename(sys.argv[0]) == "granary" else "granary"
    console.print(table("Demo summary", ["step", "seconds"], [(t, f"{s:.1f}") for t, _, s in results]))
    console.print(
        "\nNext, look at what was made (GRANARY_HOME=" + str(store.settings.home) + "):\n"
        "  granary ls                      every dataset\n"
        "  granary log demo                the versions of the demo corpus\n"
        "  granary show demo --quarantine  one version: schema, lineage, and the malformed lines kept aside\n"
        "  granary verify                  recompute every checksum\n"
        "  granary report demo-curated --purpose research   (its policy allows reads for pretraining and research)\n"
        "  granary jobs --all              the jobs the scheduler ran (granary job ID for one's history)\n"
        "  corpus: " + str(store.settings.home / "demo" / "corpus.jsonl") + "  (the README's tour ingests it)\n"
        "\nThe web dashboard and REST API over all of it:\n"
        f"  GRANARY_HOME={store.settings.home} {granary} server\n"
        "  then open http://127.0.0.1:8470/ui/ (API: http://127.0.0.1:8470/api/v1, docs at /api/v1/docs).\n"
        "  Token: none needed in the default local mode (loopback only, you act as the local admin). For several\n"
        "  users: `granary token issue NAME --scope read`, start with GRANARY_AUTH=tokens, and send\n"
        "  `Authorization: Bearer <token>` (or paste it into the dashboard's Token box); see docs/server.md.",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the demo command."""
    app.command("demo")(demo)
