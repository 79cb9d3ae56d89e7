"""Node power: RAPL energy counters (/sys/class/powercap) where readable, else a utilisation model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

POWERCAP = Path("/sys/class/powercap")


@dataclass(kw_only=True, frozen=True)
class PowerModel:
    """Linear power model ``idle + (full - idle) x utilisation`` for parts without an energy counter.

    Attributes:
        cpu_idle_w, cpu_full_w: CPU package power at idle and at full load (whole node).
        gpu_idle_w, gpu_full_w: per-GPU power at idle and at full load (used when NVML reports no power).
    """

    cpu_idle_w: float = 100.0
    cpu_full_w: float = 350.0
    gpu_idle_w: float = 60.0
    gpu_full_w: float = 700.0

    def __post_init__(self) -> None:
        if not (0 <= self.cpu_idle_w <= self.cpu_full_w and 0 <= self.gpu_idle_w <= self.gpu_full_w):
            raise ValueError("power model needs 0 <= idle <= full for CPU and GPU")

    def cpu_w(self, utilization: float) -> float:
        """Node CPU-side power at a CPU utilisation (0-1, clipped)."""
        u = min(1.0, max(0.0, utilization))
        return self.cpu_idle_w + (self.cpu_full_w - self.cpu_idle_w) * u

    def gpu_w(self, utilization: float) -> float:
        """One GPU's power at a utilisation (0-1, clipped)."""
        u = min(1.0, max(0.0, utilization))
        return self.gpu_idle_w + (self.gpu_full_w - self.gpu_idle_w) * u


class RaplReader:
    """Cumulative CPU package energy from the top-level RAPL zones, with counter wrap handled.

    ``available`` is False where the zones are missing or unreadable (most containers, non-root on recent
    kernels); callers then fall back to :class:`PowerModel`.
    """

    def __init__(self, root: Path = POWERCAP) -> None:
        self.zones: list[tuple[Path, float]] = []
        for zone in sorted(root.glob("intel-rapl:[0-9]*")):
            if zone.name.count(":") != 1:
                continue  # sub-zones (core, uncore, dram) are inside the package total
            try:
                float((zone / "energy_uj").read_text())
                wrap = float((zone / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue
            self.zones.append((zone / "energy_uj", wrap))
        self.available = bool(self.zones)
        self.last: list[float | None] = [None] * len(self.zones)
        self.total_j = 0.0

    def read_j(self) -> float | None:
        """Joules since the first read (None when RAPL is not available)."""
        if not self.available:
            return None
        for i, (path, wrap) in enumerate(self.zones):
            try:
                now = float(path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("RAPL zone %s unreadable: %s", path, exc)
                continue
            prev = self.last[i]
            if prev is not None:
                delta = now - prev if now >= prev else now + wrap - prev
                self.total_j += delta / 1e6
            self.last[i] = now
        return self.total_j
