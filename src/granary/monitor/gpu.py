"""GPU readings through NVML (``nvidia-ml-py``), and the fake NVML backend that tests use where there is no GPU.

The fake backend is the only mock in the monitor: this machine has no GPU. It holds per-GPU values that a test
sets (or a JSON file that a test rewrites, for agents running in another process) and answers like NVML does,
including a GPU that has fallen off the bus.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from granary.errors import MissingDependencyError, MonitorError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant. Fields NVML cannot read on this device are None.

    Attributes:
        index: NVML device index.
        name: product name.
        up: False when the GPU no longer answers (fell off the bus, NVML_ERROR_GPU_IS_LOST).
        utilization: share of time a kernel ran (0-1).
        energy_j: NVML's cumulative energy counter since the driver loaded.
        throttle_reasons: bit mask of ``nvmlClocksThrottleReason*``.
        xid_errors: XID events seen by this backend since it opened.
    """

    index: int
    name: str = "gpu"
    up: bool = True
    utilization: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    energy_j: float | None = None
    temperature_c: float | None = None
    sm_clock_hz: float | None = None
    throttle_reasons: int | None = None
    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    xid_errors: int = 0
    last_xid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


class GpuBackend(Protocol):
    """What the agent needs from a GPU source."""

    def read(self) -> list[GpuReading]:
        """Read every GPU."""
        ...

    def close(self) -> None:
        """Release the library."""
        ...


class NvmlBackend:
    """Reads GPUs through NVML (``pip install 'granary[monitor]'``).

    Raises:
        MonitorError: NVML is installed but there is no driver or GPU (the message says which).
    """

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise MissingDependencyError("nvidia-ml-py", "monitor") from exc
        self.nv = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise MonitorError(f"NVML could not start: {exc}", hint="no NVIDIA driver on this machine; the "
                               "agent reports CPU-side metrics only") from exc
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        self.xids = [0] * len(self.handles)
        self.last_xid: list[int | None] = [None] * len(self.handles)
        self.lost = [False] * len(self.handles)
        self.events: Any = None
        try:
            self.events = pynvml.nvmlEventSetCreate()
            for h in self.handles:
                pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, self.events)
        except pynvml.NVMLError as exc:  # not supported on every device (e.g. some MIG or vGPU set-ups)
            log.info("NVML XID events unavailable: %s", exc)

    def _drain_xids(self) -> None:
        nv = self.nv
        if self.events is None:
            return
        for _ in range(1000):
            try:
                data = nv.nvmlEventSetWait_v2(self.events, 0)
            except nv.NVMLError:  # timeout: no more events
                return
            for i, h in enumerate(self.handles):
                if _same_handle(nv, h, data.device):
                    self.xids[i] += 1
                    self.last_xid[i] = int(data.eventData)

    def read(self) -> list[GpuReading]:
        """Read every GPU (a GPU that stopped answering reads as ``up=False``)."""
        self._drain_xids()
        return [self._read_one(i, h) for i, h in enumerate(self.handles)]

    def _read_one(self, i: int, h: Any) -> GpuReading:
        nv = self.nv
        if self.lost[i]:
            return GpuReading(index=i, up=False, xid_errors=self.xids[i], last_xid=self.last_xid[i])

        def get(fn: Any, *args: Any) -> Any:
            try:
                return fn(h, *args)
            except nv.NVMLError_GpuIsLost:
                self.lost[i] = True
                raise
            except nv.NVMLError:
                return None

        try:
            name = get(nv.nvmlDeviceGetName)
            util = get(nv.nvmlDeviceGetUtilizationRates)
            mem = get(nv.nvmlDeviceGetMemoryInfo)
            power = get(nv.nvmlDeviceGetPowerUsage)
            limit = get(nv.nvmlDeviceGetEnforcedPowerLimit)
            energy = get(nv.nvmlDeviceGetTotalEnergyConsumption)
            temp = get(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU)
            clock = get(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM)
            throttle = get(nv.nvmlDeviceGetCurrentClocksThrottleReasons)
            ecc_c = get(nv.nvmlDeviceGetTotalEccErrors, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC)
            ecc_u = get(nv.nvmlDeviceGetTotalEccErrors, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                        nv.NVML_VOLATILE_ECC)
        except nv.NVMLError_GpuIsLost:
            return GpuReading(index=i, up=False, xid_errors=self.xids[i], last_xid=self.last_xid[i])
        return GpuReading(
            index=i, name=name.decode() if isinstance(name, bytes) else str(name or "gpu"), up=True,
            utilization=None if util is None else util.gpu / 100.0,
            memory_used_bytes=None if mem is None else int(mem.used),
            memory_total_bytes=None if mem is None else int(mem.total),
            power_w=None if power is None else power / 1000.0, power_limit_w=None if limit is None else limit / 1000.0,
            energy_j=None if energy is None else energy / 1000.0, temperature_c=temp,
            sm_clock_hz=None if clock is None else clock * 1e6, throttle_reasons=throttle,
            ecc_corrected=ecc_c, ecc_uncorrected=ecc_u, xid_errors=self.xids[i], last_xid=self.last_xid[i])

    def set_power_limit(self, index: int, watts: float) -> None:
        """Set a GPU's power limit (needs root; the scheduler's power cap uses it on real nodes)."""
        self.nv.nvmlDeviceSetPowerManagementLimit(self.handles[index], int(watts * 1000))

    def close(self) -> None:
        """Shut NVML down."""
        try:
            if self.events is not None:
                self.nv.nvmlEventSetFree(self.events)
            self.nv.nvmlShutdown()
        except self.nv.NVMLError as exc:
            log.debug("NVML shutdown: %s", exc)


def _same_handle(nv: Any, a: Any, b: Any) -> bool:
    try:
        return bool(nv.nvmlDeviceGetIndex(a) == nv.nvmlDeviceGetIndex(b))
    except nv.NVMLError:
        return False


@dataclass
class FakeNvml:
    """A fake NVML for tests: GPUs whose readings a test sets, energy that integrates power over time.

    Args:
        gpus: the GPUs' current readings.
        state_file: optional JSON file ``{"gpus": [{field: value}, ...]}`` re-read at every :meth:`read`, so a
            test can change readings of an agent running in another process.
    """

    gpus: list[GpuReading] = field(default_factory=list)
    state_file: Path | None = None

    @classmethod
    def with_gpus(cls, count: int, *, power_w: float = 300.0, utilization: float = 0.5,
                  state_file: Path | None = None) -> FakeNvml:
        """``count`` healthy 80 GB GPUs at the given power and utilisation."""
        gpus = [GpuReading(index=i, name="Fake H100", utilization=utilization, memory_used_bytes=10 << 30,
                           memory_total_bytes=80 << 30, power_w=power_w, power_limit_w=700.0, energy_j=0.0,
                           temperature_c=45.0, sm_clock_hz=1.98e9, throttle_reasons=0, ecc_corrected=0,
                           ecc_uncorrected=0) for i in range(count)]
        return cls(gpus=gpus, state_file=state_file)

    def set(self, index: int, **values: Any) -> None:
        """Change readings of one GPU (``xid_errors``, ``up``, ``ecc_uncorrected``, ``power_w``, ...)."""
        self.gpus[index] = replace(self.gpus[index], **values)

    def inject_xid(self, index: int, xid: int = 79) -> None:
        """One XID event on a GPU (79: fallen off the bus, 48: double-bit ECC, 13: graphics engine fault)."""
        g = self.gpus[index]
        self.gpus[index] = replace(g, xid_errors=g.xid_errors + 1, last_xid=xid)

    def advance(self, seconds: float) -> None:
        """Integrate each GPU's power into its energy counter over ``seconds``."""
        for i, g in enumerate(self.gpus):
            if g.up and g.power_w is not None:
                self.gpus[i] = replace(g, energy_j=(g.energy_j or 0.0) + g.power_w * seconds)

    def save(self) -> None:
        """Write the readings to ``state_file``."""
        if self.state_file is None:
            raise ValueError("this FakeNvml has no state_file")
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"gpus": [g.to_dict() for g in self.gpus]}))
        tmp.replace(self.state_file)

    def read(self) -> list[GpuReading]:
        """The current readings (re-read from ``state_file`` when there is one)."""
        if self.state_file is not None and self.state_file.exists():
            try:
                raw = json.loads(self.state_file.read_text())
                self.gpus = [GpuReading(**g) for g in raw["gpus"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise MonitorError(f"fake NVML state file {self.state_file} is unreadable: {exc}") from exc
        return [g if g.up else GpuReading(index=g.index, up=False, xid_errors=g.xid_errors, last_xid=g.last_xid)
                for g in self.gpus]

    def close(self) -> None:
        """Nothing to release."""


def open_gpu_backend(fake: Sequence[GpuReading] | FakeNvml | None = None) -> tuple[GpuBackend | None, str]:
    """The GPU source of this machine and a line saying what it is (``None`` and why when there is none)."""
    if isinstance(fake, FakeNvml):
        return fake, f"fake NVML ({len(fake.gpus)} GPUs)"
    if fake is not None:
        return FakeNvml(gpus=list(fake)), f"fake NVML ({len(fake)} GPUs)"
    try:
        backend = NvmlBackend()
    except (MissingDependencyError, MonitorError) as exc:
        return None, f"no GPU readings: {exc}"
    return backend, f"NVML ({len(backend.handles)} GPUs)"
