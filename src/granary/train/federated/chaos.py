"""Fault injection for federated tests and drills, driven by ``GRANARY_FED_CHAOS`` (``kind@round``, comma-separated).

``exit@2`` ends the site process in the middle of round 2's training; ``nan@1`` sends NaNs, ``scale@1`` an update
10**4 times too large (a poisoning attempt) and ``shape@1`` arrays of the wrong shape in round 1.
"""

from __future__ import annotations

import os

import numpy as np


def _faults() -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, os.environ.get("GRANARY_FED_CHAOS", "").split(",")):
        kind, _, rnd = item.partition("@")
        out[kind.strip()] = int(rnd or 1)
    return out


def maybe_fail(phase: str, rnd: int) -> None:
    if _faults().get("exit") == rnd and phase == "fit":
        os._exit(17)  # a crash: no cleanup, no goodbye to the coordinator


def maybe_poison(delta: np.ndarray, rnd: int) -> np.ndarray:
    f = _faults()
    if f.get("nan") == rnd:
        delta = delta.copy()
        delta[::7] = np.nan
    if f.get("scale") == rnd:
        delta = delta * 1e4
    return delta


def maybe_malform(arrays: list[np.ndarray], rnd: int) -> list[np.ndarray]:
    if _faults().get("shape") == rnd:
        return [a.ravel()[:-1] for a in arrays]
    return arrays
