import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _short_machine_probe(monkeypatch):
    """Every evaluation records a ~1 s matmul probe of the machine; tests measure for 20 ms instead."""
    import ropekit.machine

    monkeypatch.setattr(ropekit.machine, "PROBE_SECONDS", 0.02)


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """An empty ropekit cache (for tests that must not touch the user's)."""
    monkeypatch.setenv("ROPEKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))
