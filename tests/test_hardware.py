"""Hardware detection works on this CPU-only machine and never lets a broken kernel crash the app."""
from __future__ import annotations

import time

import psutil

from wan_app import hardware
from wan_app.hardware import GPU, Hardware, detect, probe_attention


def test_detect_on_a_machine_without_nvidia_drivers_is_quick_and_sane():
    detect()                                       # warm: torch import and the cached probe
    t = time.perf_counter()
    hw = detect()
    assert time.perf_counter() - t < 2.0
    assert hw.gpus == [] and hw.device in ("cpu", "mps")
    total = psutil.virtual_memory().total / 1e9
    assert hw.ram_total_gb == __import__("pytest").approx(total, rel=0.01)
    assert 0 < hw.ram_available_gb <= hw.ram_total_gb
    assert "sdpa" in hw.attention                  # torch SDPA always runs
    assert "sage" in hw.attention_failures and "flash" in hw.attention_failures
    assert hw.cpu_count >= 1


def test_a_probe_that_raises_on_import_is_reported_not_raised():
    def broken(device):
        raise ImportError("libcudart.so.12: cannot open shared object file")

    def exits(device):
        raise SystemExit(1)                        # some broken wheels call exit() at import

    ok, failures = probe_attention("cpu", {"sage": broken, "flash": exits,
                                           "sdpa": hardware.DEFAULT_PROBES["sdpa"]})
    assert ok == ["sdpa"]
    assert failures["sage"].startswith("ImportError") and "libcudart" in failures["sage"]
    assert failures["flash"].startswith("SystemExit")


def test_detect_uses_injected_probes():
    hw = detect(probes={"sdpa": lambda d: None, "sage": lambda d: (_ for _ in ()).throw(RuntimeError("no"))})
    assert hw.attention == ["sdpa"] and hw.attention_failures == {"sage": "RuntimeError: no"}


def test_capabilities_follow_compute_capability():
    assert not GPU.from_cc("T4", 16, 15, (7, 5)).bf16
    a100 = GPU.from_cc("A100", 80, 79, (8, 0))
    assert a100.bf16 and not a100.fp8
    assert GPU.from_cc("RTX 4090", 24, 23, (8, 9)).fp8


def test_simulated_machines_pick_their_device():
    assert Hardware.simulated(16, 32).device == "cuda:0"
    assert Hardware.simulated(None, 32).device == "cpu"
    mac = Hardware.simulated(None, 32, mps=True)
    assert mac.device == "mps" and mac.gpus == []
    hw = Hardware.simulated(16, 32, attention=("sage",))
    assert hw.attention == ["sage", "sdpa"] and "flash" in hw.attention_failures


def test_describe_and_to_dict_state_every_fact():
    hw = Hardware.simulated(24, 64, gpu_name="RTX 4090", attention_failures={"sage": "ImportError: x"})
    text = hw.describe()
    for fact in ("RTX 4090", "24.0 GB", "compute capability 8.9", "RAM: 64.0 GB", "CPU cores",
                 "sage unavailable: ImportError: x", "Device used: cuda:0"):
        assert fact in text
    d = hw.to_dict()
    assert d["device"] == "cuda:0" and d["gpus"][0]["total_gb"] == 24.0
