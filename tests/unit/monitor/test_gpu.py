"""The fake NVML backend (the only mock: no GPU here) and the GPU samples the agent makes of readings."""

from __future__ import annotations

from pathlib import Path

import pytest

from granary.errors import MonitorError
from granary.monitor.agent import gpu_samples
from granary.monitor.gpu import FakeNvml, open_gpu_backend


def test_fake_gpus_read_and_integrate_energy() -> None:
    fake = FakeNvml.with_gpus(2, power_w=250.0)
    fake.advance(4.0)
    readings = fake.read()
    assert [g.energy_j for g in readings] == [1000.0, 1000.0]
    fake.inject_xid(1, 79)
    fake.set(1, up=False)
    lost = fake.read()[1]
    assert (lost.up, lost.xid_errors, lost.last_xid, lost.power_w) == (False, 1, 79, None)


def test_state_file_lets_another_process_inject_faults(tmp_path: Path) -> None:
    writer = FakeNvml.with_gpus(1, state_file=tmp_path / "gpus.json")
    writer.save()
    reader = FakeNvml(state_file=tmp_path / "gpus.json")
    assert reader.read()[0].ecc_uncorrected == 0
    writer.set(0, ecc_uncorrected=3)
    writer.save()
    assert reader.read()[0].ecc_uncorrected == 3
    (tmp_path / "gpus.json").write_text("{not json")
    with pytest.raises(MonitorError, match="unreadable"):
        reader.read()


def test_gpu_samples_leave_out_what_nvml_cannot_read() -> None:
    fake = FakeNvml.with_gpus(1)
    fake.set(0, power_w=None, energy_j=None)
    samples = {(n, lab): v for n, lab, v in gpu_samples(fake.read())}
    assert samples[("granary_node_gpus", ())] == 1.0
    assert samples[("granary_gpu_up", (("gpu", "0"),))] == 1.0
    assert samples[("granary_gpu_utilization_ratio", (("gpu", "0"),))] == 0.5
    assert ("granary_gpu_power_watts", (("gpu", "0"),)) not in samples
    fake.set(0, up=False)
    samples = {(n, lab): v for n, lab, v in gpu_samples(fake.read())}
    assert samples[("granary_gpu_up", (("gpu", "0"),))] == 0.0
    assert ("granary_gpu_utilization_ratio", (("gpu", "0"),)) not in samples


def test_no_gpu_is_said_not_hidden() -> None:
    backend, status = open_gpu_backend()
    # this machine has no NVIDIA driver: the agent runs without GPU readings and says why
    if backend is None:
        assert status.startswith("no GPU readings:")
    else:  # pragma: no cover - on a GPU machine
        assert status.startswith("NVML")
        backend.close()
