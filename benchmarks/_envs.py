"""The anchors' virtual environments, created (or completed) on first use, and child processes whose failure
shows the child's own error. Shared by the benchmarks; not a benchmark itself.

Each anchor runs in its own virtualenv under ``benchmarks/`` so that its dependencies never touch Granary's.
An environment is checked by importing what the benchmark needs; a missing or incomplete one is installed
again with pip (re-running a benchmark is safe: a complete environment is left as it is).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TORCH = "torch==2.13.0"  # the CPU wheel on this project's machines; pinned so no anchor pulls a CUDA build


def run_child(cmd: Sequence[str | Path], what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a child process; if it fails, print its stderr (and stdout tail) and stop with a message naming it."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        sys.stderr.write(f"--- {what}: stdout (tail) ---\n{proc.stdout[-2000:]}\n"
                         f"--- {what}: stderr ---\n{proc.stderr[-8000:]}\n")
        raise SystemExit(f"{what} failed with exit code {proc.returncode} (its error is printed above)")
    return proc


def _imports(py: Path, modules: Sequence[str]) -> bool:
    """Whether every module is installed in that environment (found, not imported: some anchors patch
    their imports at run time, see stream_anchors.py)."""
    code = ("import importlib.util, sys; "
            f"sys.exit(any(importlib.util.find_spec(m) is None for m in {list(modules)!r}))")
    return subprocess.run([str(py), "-c", code], capture_output=True, check=False).returncode == 0


def ensure_venv(name: str, installs: Sequence[Sequence[str]], imports: Sequence[str], *,
                uninstall: Sequence[str] = (), constraints: Sequence[str] = ()) -> Path:
    """The python of ``benchmarks/<name>``, with ``imports`` importable; creates or completes it.

    Args:
        name: folder of the virtualenv under benchmarks/.
        installs: pip install argument lists, run in order (e.g. torch first).
        imports: modules whose import proves the environment complete.
        uninstall: packages removed after installing (e.g. a CUDA build pulled in by a dependency).
        constraints: pip constraints applied to every install (e.g. the torch pin).
    """
    venv = ROOT / name
    py = venv / "bin" / "python"
    if py.exists() and _imports(py, imports):
        return py
    print(f"setting up {venv} (first run, or an incomplete environment) ...", file=sys.stderr)
    if not py.exists():
        run_child([sys.executable, "-m", "venv", venv], f"creating {venv}")
    run_child([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], f"upgrading pip in {venv}")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(constraints) + "\n")
    extra = ["-c", f.name] if constraints else []
    for args in installs:
        run_child([py, "-m", "pip", "install", "-q", *extra, *args], f"pip install {' '.join(args)} into {venv}")
    for pkg in uninstall:
        subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", pkg], capture_output=True, check=False)
    Path(f.name).unlink(missing_ok=True)
    if not _imports(py, imports):
        raise SystemExit(f"{venv} still lacks one of {', '.join(imports)} after installing; remove the folder "
                         "and run again")
    return py


def datatrove_python() -> Path:
    """datatrove with its processing extra; spaCy too, which its English word tokenizer needs."""
    return ensure_venv(".venv-datatrove", [["datatrove[processing]", "orjson", "spacy"]],
                       ["datatrove", "orjson", "spacy"])


def stream_anchors_python() -> Path:
    """LitData, MosaicML Streaming and WebDataset on the CPU build of torch (torchvision removed: its CUDA
    build does not load here, and the anchors do not need it)."""
    return ensure_venv(".venv-stream-anchors",
                       [[TORCH, "numpy"], ["litdata", "mosaicml-streaming", "webdataset"]],
                       ["torch", "litdata", "streaming", "webdataset"], uninstall=["torchvision"],
                       constraints=[TORCH])
