"""The shape of a memory plan: what the planner decides and what wan_app.memory carries out.

Kept apart from the planner's logic so the engine, the memory module and the UI agree on one type.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

DTYPES = ("fp32", "bf16", "fp16", "fp8")
ATTENTION_BACKENDS = ("auto", "sage", "flash", "sdpa", "native")
TEXT_ENCODER_PLACES = ("auto", "gpu", "cpu")


@dataclass
class Overrides:
    """Choices a user forces; None means 'let the planner decide'."""
    blocks_swapped: int | None = None     # transformer blocks kept in (pinned) CPU memory
    weight_dtype: str | None = None       # DiT weight storage: fp32 / bf16 / fp16 / fp8
    text_encoder: str | None = None       # gpu / cpu
    attention: str | None = None          # sage / flash / sdpa / native
    vae_tiling: bool | None = None
    experts_resident: str | None = None   # A14B: "both" or "one"
    compile: bool | None = None           # torch.compile the blocks (None: the planner decides: off for now)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _norm_dtype(d: str | None) -> str | None:
    if not d:
        return None
    d = d.lower()
    return "fp8" if d.startswith("fp8") or "e4m3" in d else d


@dataclass(frozen=True)
class DiskWeights:
    """How the files that will load are stored: the planner keeps what matches the plan memory-mapped
    (file-backed pages the kernel can drop) and counts what must be converted as anonymous memory."""
    dit: str | None = None                # fp32 / bf16 / fp16 / fp8 (scaled fp8 included)
    text_encoder: str | None = None
    dit_bytes: int = 0                    # one expert's file bytes (0 = unknown: counted from the shapes)
    text_encoder_bytes: int = 0
    lora_bytes: int = 0                   # LoRA tensors attached to one expert, at 2 bytes an element
    lora_block_bytes: int = 0             # of which inside one block (a swap slot carries them)
    gguf_block_bytes: int = 0             # a GGUF DiT: the largest block's bytes in the file
    gguf_nonblock_bytes: int = 0          # and everything outside the blocks

    def __post_init__(self):
        object.__setattr__(self, "dit", _norm_dtype(self.dit))
        object.__setattr__(self, "text_encoder", _norm_dtype(self.text_encoder))

    @classmethod
    def of(cls, files, loras=()) -> "DiskWeights":
        """From checkpoints.ModelFiles (what Inventory.resolve returns) and the LoRAs to attach
        (wan_app.lora.LoraUse); an expert's LoRAs add up, the larger expert counts."""
        te = files.text_encoder if files is not None else None
        per: dict[str, list] = {}
        for u in loras:
            for expert, f, s in u.apply:
                if s != 0.0:
                    per.setdefault(expert, []).append(f)
        total = max((sum(f.attached_bytes(2) for f in fs) for fs in per.values()), default=0)
        block = max((sum(f.block_bytes(2) for f in fs) for fs in per.values()), default=0)
        if files is None:
            return cls(lora_bytes=total, lora_block_bytes=block)
        gguf = {}
        if files.transformer.dtype == "gguf":
            # exact bytes from the file's header (what block swap moves and the device holds)
            from .checkpoints.gguf import gguf_sizes, read_gguf_header
            sz = gguf_sizes(read_gguf_header(files.transformer.path))
            gguf = dict(gguf_block_bytes=max(sz.blocks, default=0), gguf_nonblock_bytes=sz.nonblock)
        return cls(dit=files.transformer.dtype, text_encoder=te.dtype if te is not None else None,
                   dit_bytes=int(files.transformer.nbytes or 0),
                   text_encoder_bytes=int(te.nbytes or 0) if te is not None else 0,
                   lora_bytes=total, lora_block_bytes=block, **gguf)


@dataclass
class Plan:
    device: str                       # "cuda:0", "mps" or "cpu"
    compute_dtype: str                # dtype activations run in: bf16 / fp16 / fp32
    weight_dtype: str                 # DiT weight storage: bf16 / fp16 / fp32 / fp8 (upcast per layer)
    text_encoder_device: str          # where umT5 runs: the device or "cpu"
    text_encoder_dtype: str
    blocks_total: int
    blocks_swapped: int               # the last K blocks live in CPU memory and stream in per step
    attention_backend: str            # sage / flash / sdpa / native (what will actually run)
    vae_tiling: bool
    max_frames: int                   # largest 4n+1 that fits at the requested size
    experts_resident: str = "both"    # A14B: "both" in RAM, or "one" streamed from disk at the switch
    cfg_batched: bool = False         # cond + uncond in one batch-2 forward: one trip per swapped block per step
    est_vram_gb: float = 0.0          # estimated peak VRAM
    est_ram_gb: float = 0.0           # estimated peak anonymous RAM (must fit: it cannot be dropped)
    est_file_gb: float = 0.0          # memory-mapped weight files (page cache the kernel may drop and re-read)
    cfg_passes: int = 2               # forwards per step: 1 at CFG scale 1 (no negative prompt), else 2
    fp8_matmul: bool = False          # fp8 weights multiply in fp8 (torch._scaled_mm) instead of an upcast
    step_cache: str = "off"           # what the step cache will skip (wan_app.stepcache summary), or "off"
    compiled: bool = False            # transformer blocks run through torch.compile (wan_app.compile_blocks)
    vram_budget_gb: float = 0.0       # what the plan may fill: GPU memory after the safety margin
    ram_budget_gb: float = 0.0        # RAM after what the system uses and a margin
    reasons: list[str] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)   # names of fields set by overrides
    text_encoder_kept: bool = True    # umT5 stays in RAM between prompts (False: released, reloaded per prompt)
    # Why this run cannot go ahead as asked ({"field", "problem", "fix"} for a UserError), None = it can.
    blocker: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return "\n".join(self.reasons)
