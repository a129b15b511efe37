"""What this machine has: GPUs, RAM, and the attention kernels that actually run here.

`detect()` asks NVML first (no CUDA context, works even when torch is a CPU build), torch.cuda second,
then Apple MPS, else CPU. Attention kernels are listed only when they import *and* run a tiny call on the
device, because an installed-but-broken sageattention/flash_attn is the most common failure users report
of other Wan tools. `Hardware.simulated()` builds fake machines for tests and `app.py plan --vram ...`.
"""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

GB = 1e9   # decimal gigabytes, as the catalog and docs/WAN_FACTS.md quote model sizes

# Order matters: it is the planner's order of preference among the kernels that ran.
ATTENTION_KERNELS = ("sage", "flash", "sdpa_flash", "sdpa_efficient", "sdpa")


@dataclass
class GPU:
    name: str
    total_gb: float
    free_gb: float
    compute_capability: tuple[int, int]
    bf16: bool = False      # native bf16 math: Ampere (cc 8.0) and newer
    fp8: bool = False       # fast fp8 matmul: Ada / Hopper (cc 8.9) and newer
    # torch._scaled_mm ran here (probed at start, like the attention kernels); None: not probed (a
    # simulated machine), taken to follow `fp8`
    scaled_mm: bool | None = None
    scaled_mm_why: str = ""

    @classmethod
    def from_cc(cls, name: str, total_gb: float, free_gb: float, cc: tuple[int, int]) -> "GPU":
        cc = (int(cc[0]), int(cc[1]))
        return cls(name, float(total_gb), float(free_gb), cc, bf16=cc >= (8, 0), fp8=cc >= (8, 9))


@dataclass
class Hardware:
    gpus: list[GPU] = field(default_factory=list)
    mps: bool = False
    ram_total_gb: float = 0.0
    ram_available_gb: float = 0.0
    attention: list[str] = field(default_factory=lambda: ["sdpa"])
    attention_failures: dict[str, str] = field(default_factory=dict)
    cpu_count: int = 1
    simulated_machine: bool = False
    triton: bool = False      # Triton is installed (torch.compile's GPU compiler; wan_app.compile_blocks)

    @property
    def device(self) -> str:
        if self.gpus:
            return "cuda:0"
        return "mps" if self.mps else "cpu"

    @classmethod
    def simulated(cls, vram_gb: float | None, ram_gb: float, gpu_name: str = "Simulated GPU",
                  cc: tuple[int, int] = (8, 9),
                  attention: tuple[str, ...] = ("sdpa_flash", "sdpa_efficient", "sdpa"),
                  attention_failures: dict[str, str] | None = None, mps: bool = False,
                  free_vram_gb: float | None = None, ram_available_gb: float | None = None,
                  cpu_count: int = 8, triton: bool | None = None) -> "Hardware":
        """A fake machine. vram_gb=None: no NVIDIA GPU (CPU-only, or Apple silicon with mps=True).
        triton=None: a simulated NVIDIA machine has Triton (as torch's Linux CUDA wheels bring it)."""
        if vram_gb is not None and mps:
            raise ValueError("a simulated machine has either an NVIDIA GPU (vram_gb) or MPS, not both")
        gpus = [] if vram_gb is None else [
            GPU.from_cc(gpu_name, vram_gb, vram_gb if free_vram_gb is None else free_vram_gb, cc)]
        attention = list(attention)
        if "sdpa" not in attention:
            attention.append("sdpa")        # torch SDPA exists wherever torch does
        failures = dict(attention_failures or {})
        for k in ATTENTION_KERNELS:
            if k not in attention:
                failures.setdefault(k, "not available on this simulated machine")
        # An OS, a desktop and a browser keep ~10% of RAM busy on a typical machine.
        avail = ram_gb * 0.9 if ram_available_gb is None else ram_available_gb
        return cls(gpus=gpus, mps=mps, ram_total_gb=float(ram_gb), ram_available_gb=float(avail),
                   attention=attention, attention_failures=failures, cpu_count=cpu_count,
                   simulated_machine=True, triton=bool(gpus) if triton is None else triton)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["device"] = self.device
        return d

    def describe(self) -> str:
        lines = []
        if self.simulated_machine:
            lines.append("Simulated machine (not detected)")
        for i, g in enumerate(self.gpus):
            lines.append(f"GPU {i}: {g.name}, {g.total_gb:.1f} GB ({g.free_gb:.1f} GB free), "
                         f"compute capability {g.compute_capability[0]}.{g.compute_capability[1]}")
            lines.append(f"GPU {i} bf16: {'yes' if g.bf16 else 'no (needs compute capability 8.0)'}; "
                         f"fast fp8 matmul: {'yes' if g.fp8 else 'no (needs 8.9)'}")
        if not self.gpus:
            lines.append("Apple GPU (MPS), memory shared with the CPU" if self.mps else "No GPU: CPU only")
        lines.append(f"RAM: {self.ram_total_gb:.1f} GB ({self.ram_available_gb:.1f} GB available)")
        lines.append(f"CPU cores: {self.cpu_count}")
        lines.append("Attention kernels that ran: " + (", ".join(self.attention) or "none"))
        for name, why in self.attention_failures.items():
            lines.append(f"Attention kernel {name} unavailable: {why}")
        lines.append(f"Device used: {self.device}")
        return "\n".join(lines)


# ---- detection ------------------------------------------------------------------------------------

def _nvml_gpus() -> list[GPU]:
    import pynvml  # nvidia-ml-py; raises NVMLError quickly when no driver is installed
    pynvml.nvmlInit()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else str(name)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            cc = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            gpus.append(GPU.from_cc(name, mem.total / GB, mem.free / GB, tuple(cc)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _torch_gpus() -> list[GPU]:
    import torch
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(GPU.from_cc(p.name, total / GB, free / GB, (p.major, p.minor)))
    return gpus


def _visible(gpus: list[GPU]) -> list[GPU]:
    # NVML lists every GPU in the box; torch only sees CUDA_VISIBLE_DEVICES, so "cuda:0" must match it.
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return gpus
    try:
        idx = [int(x) for x in spec.split(",") if x.strip() != ""]
    except ValueError:
        return gpus           # UUID form: cannot map without more NVML calls; keep NVML's order
    return [gpus[i] for i in idx if 0 <= i < len(gpus)]


def _mps_available() -> bool:
    try:
        import torch
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    except Exception:  # noqa: BLE001 - detection must never crash the app
        return False


def detect(probes: dict[str, Callable[[str], None]] | None = None) -> Hardware:
    """Snapshot of this machine. Never raises; each source that fails is simply skipped."""
    import psutil
    gpus: list[GPU] = []
    try:
        gpus = _visible(_nvml_gpus())
    except Exception:  # noqa: BLE001 - no driver / no libnvidia-ml: fall through to torch
        gpus = []
    if gpus:
        # NVML sees the card even with a CPU-only torch build; the device is usable only if torch agrees.
        try:
            import torch
            if not torch.cuda.is_available():
                gpus = []
        except Exception:  # noqa: BLE001
            gpus = []
    else:
        try:
            gpus = _torch_gpus()
        except Exception:  # noqa: BLE001
            gpus = []
    mps = not gpus and _mps_available()
    vm = psutil.virtual_memory()
    hw = Hardware(gpus=gpus, mps=mps, ram_total_gb=vm.total / GB, ram_available_gb=vm.available / GB,
                  cpu_count=os.cpu_count() or 1)
    ok, failures = probe_attention(hw.device, probes) if probes is not None else _cached_probe(hw.device)
    hw.attention, hw.attention_failures = list(ok), dict(failures)
    if gpus:
        from .compile_blocks import triton_installed
        hw.triton = triton_installed()
    if gpus and probes is None:
        from .fp8_matmul import choose_fp8_path
        for i, g in enumerate(gpus):
            path, g.scaled_mm_why = choose_fp8_path(f"cuda:{i}")
            g.scaled_mm = path == "scaled_mm"
    return hw


# ---- attention probe ----------------------------------------------------------------------------

def _qkv(device: str, layout: str = "BHLD"):
    import torch
    dtype = torch.float32 if device == "cpu" else torch.float16
    shape = (1, 2, 64, 128) if layout == "BHLD" else (1, 64, 2, 128)
    return torch.randn(shape, device=device, dtype=dtype)


def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()     # kernel launch errors surface only here


def _probe_sage(device: str) -> None:
    from sageattention import sageattn   # import first: "not installed" is the more useful message
    if not device.startswith("cuda"):
        raise RuntimeError("SageAttention needs an NVIDIA GPU")
    q = _qkv(device)
    sageattn(q, q, q, tensor_layout="HND", is_causal=False)
    _sync(device)


def _probe_flash(device: str) -> None:
    from flash_attn import flash_attn_func
    if not device.startswith("cuda"):
        raise RuntimeError("flash-attn needs an NVIDIA GPU")
    q = _qkv(device, "BLHD")
    flash_attn_func(q, q, q)
    _sync(device)


def _probe_sdpa_backend(backend_name: str | None) -> Callable[[str], None]:
    def probe(device: str) -> None:
        import torch.nn.functional as F
        q = _qkv(device)
        if backend_name is None:
            F.scaled_dot_product_attention(q, q, q)
        else:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel(getattr(SDPBackend, backend_name)):
                F.scaled_dot_product_attention(q, q, q)
        _sync(device)
    return probe


DEFAULT_PROBES: dict[str, Callable[[str], None]] = {
    "sage": _probe_sage,
    "flash": _probe_flash,
    "sdpa_flash": _probe_sdpa_backend("FLASH_ATTENTION"),
    "sdpa_efficient": _probe_sdpa_backend("EFFICIENT_ATTENTION"),
    "sdpa": _probe_sdpa_backend(None),
}


def probe_attention(device: str, probes: dict[str, Callable[[str], None]] | None = None
                    ) -> tuple[list[str], dict[str, str]]:
    """Run each kernel once on a tiny input. Returns (kernels that ran, {kernel: why not})."""
    probes = DEFAULT_PROBES if probes is None else probes
    ok: list[str] = []
    failures: dict[str, str] = {}
    for name, probe in probes.items():
        try:
            probe(device)
            ok.append(name)
        except BaseException as e:  # noqa: BLE001 - a broken wheel may raise anything, even SystemExit
            if isinstance(e, KeyboardInterrupt):
                raise
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            failures[name] = f"{type(e).__name__}: {msg}"[:200] if msg else type(e).__name__
    return ok, failures


@functools.lru_cache(maxsize=4)
def _cached_probe(device: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    ok, failures = probe_attention(device)
    return tuple(ok), tuple(failures.items())
