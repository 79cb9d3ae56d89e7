"""Host readings of a node through psutil and /proc: CPU, memory, filesystems, disk and network I/O, pressure."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]

_SKIP_FS = {"tmpfs", "devtmpfs", "overlay", "squashfs", "proc", "sysfs", "cgroup", "cgroup2", "nsfs", "autofs"}


def read_pressure(root: Path = Path("/proc/pressure")) -> dict[str, float]:
    """PSI ``some avg10`` per resource as a 0-1 share (empty where the kernel has no PSI)."""
    out: dict[str, float] = {}
    for resource in ("cpu", "memory", "io"):
        try:
            line = (root / resource).read_text().splitlines()[0]
        except (OSError, IndexError):
            continue
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        try:
            out[resource] = float(fields["avg10"]) / 100.0
        except (KeyError, ValueError):
            log.debug("unexpected PSI line in %s: %r", root / resource, line)
    return out


class HostSampler:
    """Reads the host each time :meth:`sample` is called.

    Label sets are bounded: at most ``max_mounts`` real filesystems and ``max_interfaces`` network
    interfaces (loopback excluded), chosen once at start.

    Args:
        max_mounts: filesystems to report.
        max_interfaces: interfaces to report.
    """

    def __init__(self, *, max_mounts: int = 16, max_interfaces: int = 16) -> None:
        parts = [p for p in psutil.disk_partitions(all=False) if p.fstype not in _SKIP_FS]
        self.mounts = sorted({p.mountpoint for p in parts})[:max_mounts] or ["/"]
        nics = psutil.net_io_counters(pernic=True)
        self.interfaces = sorted(n for n in nics if n != "lo")[:max_interfaces]
        self.cpu_count = os.cpu_count() or 1
        psutil.cpu_percent(interval=None)  # prime: the next call measures since now
        self.cpu_utilization = 0.0

    def sample(self) -> list[Sample]:
        """One reading of every host metric."""
        out: list[Sample] = []
        self.cpu_utilization = psutil.cpu_percent(interval=None) / 100.0
        out.append(("granary_node_cpu_utilization_ratio", (), self.cpu_utilization))
        out.append(("granary_node_cpu_count", (), float(self.cpu_count)))
        out.append(("granary_node_load1", (), os.getloadavg()[0]))
        mem = psutil.virtual_memory()
        out.append(("granary_node_memory_total_bytes", (), float(mem.total)))
        out.append(("granary_node_memory_used_bytes", (), float(mem.total - mem.available)))
        for mount in self.mounts:
            try:
                du = psutil.disk_usage(mount)
            except OSError:
                continue  # unmounted since start
            out.append(("granary_node_filesystem_size_bytes", (("mount", mount),), float(du.total)))
            out.append(("granary_node_filesystem_used_bytes", (("mount", mount),), float(du.used)))
        io = psutil.disk_io_counters()
        if io is not None:
            out.append(("granary_node_disk_read_bytes_total", (), float(io.read_bytes)))
            out.append(("granary_node_disk_written_bytes_total", (), float(io.write_bytes)))
        nics = psutil.net_io_counters(pernic=True)
        for name in self.interfaces:
            c = nics.get(name)
            if c is not None:
                out.append(("granary_node_network_received_bytes_total", (("interface", name),), float(c.bytes_recv)))
                out.append(("granary_node_network_sent_bytes_total", (("interface", name),), float(c.bytes_sent)))
        for resource, value in read_pressure().items():
            out.append(("granary_node_pressure_ratio", (("resource", resource),), value))
        return out
