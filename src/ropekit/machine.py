"""What machine a result came from, and how fast it is: CPU model, cores, accelerator, and a short fp32 matmul probe.

A time measured on one machine means little on another; recorded with the machine's measured fp32 matmul rate
(GFLOP/s) it can be scaled: a job dominated by matrix products takes about (time × rate here / rate there).
"""

from __future__ import annotations

import os
import platform
import time

import torch

PROBE_SECONDS = 1.0
PROBE_SIZE = 1024  # 2·1024³ ≈ 2.1 GFLOP per product: many products per second on a CPU, enough to time on a GPU


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(device: str | torch.device = "cpu", seconds: float | None = None, size: int = PROBE_SIZE) -> float:
    """fp32 matrix-multiply throughput in GFLOP/s, measured for about ``seconds`` (default :data:`PROBE_SECONDS`)
    after one warm-up product."""
    device = torch.device(device)
    seconds = PROBE_SECONDS if seconds is None else seconds
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b)
    sync()
    count, start = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        count += 1
        if count % 4 == 0 or device.type != "cuda":
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
    return 2 * size**3 * count / elapsed / 1e9


def machine(device: str | torch.device | None = None, seconds: float | None = None) -> dict:
    """``{"cpu", "cores", "threads", "gpu", "fp32_gflops", "probe_device"}`` for the device that runs the work."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    gpu = None
    if device.type == "cuda":
        gpu = f"{torch.cuda.get_device_name(device)} ×{torch.cuda.device_count()}"
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu,
            "fp32_gflops": round(matmul_gflops(device, seconds), 1), "probe_device": device.type}


def describe_machine(facts: dict) -> str:
    """One line, e.g. ``Intel Xeon … (2 cores, 2 threads), fp32 matmul 170 GFLOP/s``."""
    where = facts.get("gpu") or f"{facts['cpu']} ({facts['cores']} cores, {facts['threads']} threads)"
    return f"{where}, fp32 matmul {facts['fp32_gflops']:.0f} GFLOP/s"
