"""Latency statistics and the environment record of ``edgefrac bench``, without a model."""

from __future__ import annotations

import math

import pytest

from edgefrac.bench.environment import Environment, collect_environment, cpu_model
from edgefrac.bench.latency import peak_rss_bytes
from edgefrac.bench.stats import latency_stats
from edgefrac.errors import UsageError
from edgefrac.runtime import RuntimeInfo

RUNTIME = RuntimeInfo(name="litert", module="ai_edge_litert.interpreter", version="2.3.0", numpy_version="2.0")


def test_stats_one_to_ten_ms():
    stats = latency_stats([v / 1000 for v in range(1, 11)])
    assert stats.runs == 10
    assert stats.mean_ms == pytest.approx(5.5)
    # Population standard deviation: sqrt(sum((v - 5.5)^2) / 10) = sqrt(8.25).
    assert stats.std_ms == pytest.approx(math.sqrt(8.25))
    assert stats.min_ms == pytest.approx(1.0)
    assert stats.max_ms == pytest.approx(10.0)
    # Linear interpolation at rank p/100 * (n - 1) over the sorted samples.
    assert stats.p50_ms == pytest.approx(5.5)
    assert stats.p90_ms == pytest.approx(9.1)
    assert stats.p95_ms == pytest.approx(9.55)
    assert stats.p99_ms == pytest.approx(9.91)
    assert stats.throughput_per_second == pytest.approx(1000 / 5.5)


def test_stats_unsorted_samples():
    stats = latency_stats([0.004, 0.001, 0.003, 0.002])
    assert stats.p50_ms == pytest.approx(2.5)
    # Rank 0.9 * 3 = 2.7 lies between 3 ms and 4 ms.
    assert stats.p90_ms == pytest.approx(3.7)
    assert stats.min_ms == pytest.approx(1.0)


def test_stats_single_sample():
    stats = latency_stats([0.020])
    assert stats.std_ms == 0.0
    assert stats.p99_ms == pytest.approx(20.0)
    assert stats.throughput_per_second == pytest.approx(50.0)


def test_stats_reject_empty():
    with pytest.raises(UsageError, match="no latency samples"):
        latency_stats([])


def test_stats_reject_negative():
    with pytest.raises(UsageError, match="non-negative"):
        latency_stats([0.001, -0.002])


def test_stats_dict_keys():
    data = latency_stats([0.001, 0.002]).to_dict()
    expected = {"runs", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms",
                "throughput_per_second"}
    assert set(data) == expected


def test_environment_raspberry_pi(tmp_path):
    board = tmp_path / "model"
    board.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\nModel\t: Raspberry Pi 4\n")
    governor = tmp_path / "governor"
    governor.write_text("ondemand\n")
    env = collect_environment(RUNTIME, device_tree_model=board, cpuinfo=cpuinfo, governor=governor)
    assert env.board == "Raspberry Pi 4 Model B Rev 1.4"
    assert env.cpu_model == "0x41 part 0xd08"
    assert env.governor == "ondemand"
    assert any("not 'performance'" in warning for warning in env.warnings())


def test_environment_missing_files(tmp_path):
    missing = tmp_path / "absent"
    env = collect_environment(RUNTIME, device_tree_model=missing, cpuinfo=missing, governor=missing)
    assert env.board is None
    assert env.governor is None
    assert env.cpu_model


def test_environment_fields_present():
    env = collect_environment(RUNTIME)
    data = env.to_dict()
    assert set(data) == {
        "board", "cpu_model", "cpu_cores", "usable_cores", "machine", "governor", "load_average",
        "python_version", "runtime", "runtime_version", "numpy_version", "edgefrac_version",
    }
    assert isinstance(data["cpu_cores"], int)
    assert data["runtime"] == "litert"
    assert isinstance(data["cpu_model"], str)


def test_cpu_model_x86(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 7B13"


def _environment(governor, load):
    return Environment(
        board=None, cpu_model="cpu", cpu_cores=4, usable_cores=4, machine="aarch64", governor=governor,
        load_average=load, python_version="3.11", runtime="litert", runtime_version="2.3.0",
        numpy_version="2.0", edgefrac_version="0.1.0",
    )


def test_warnings_busy_machine():
    warnings = _environment("performance", (3.5, 1.0, 1.0)).warnings()
    assert len(warnings) == 1
    assert "busy" in warnings[0]


def test_warnings_quiet_machine():
    assert _environment("performance", (0.2, 0.1, 0.1)).warnings() == []


def test_peak_rss_from_status(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\n")
    assert peak_rss_bytes(status) == 2048 * 1024


def test_peak_rss_fallback(tmp_path):
    assert peak_rss_bytes(tmp_path / "absent") > 0
