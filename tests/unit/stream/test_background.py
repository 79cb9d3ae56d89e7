"""The loader's background threads are stopped and joined at interpreter exit, never cut down mid-work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, time
from pathlib import Path
from granary.stream import background

def work(out):
    while not background.exiting():
        time.sleep(0.01)
    Path(out).write_text("stopped cleanly")

background.start(work, sys.argv[1], name="granary-test")
"""


def test_a_background_thread_is_joined_before_the_interpreter_exits(tmp_path: Path) -> None:
    out = tmp_path / "done"
    child = subprocess.run([sys.executable, "-c", CHILD, str(out)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert out.read_text() == "stopped cleanly"  # it saw the exit flag and finished its unit of work


def test_join_all_names_threads_that_do_not_stop(tmp_path: Path) -> None:
    code = ("import threading\nfrom granary.stream import background\nev = threading.Event()\n"
            "background.start(ev.wait, name='granary-stuck')\nprint(background.join_all(0.2))\nev.set()\n")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "['granary-stuck']"
