"""What a person asked for (`--lora FILE[:STRENGTH[:STRENGTH_LOW]]`, the UI's picker, a video's metadata)
-> which file goes on which expert with which strength, checked before anything loads."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..catalog import ModelSpec
from ..errors import UserError
from .apply import check_strength
from .find import LoraFile, LoraItem, group_items, identify, lora_id


@dataclass(frozen=True)
class LoraChoice:
    file: str                         # a path, a file name under a loras/ folder, or a pair's item name
    strength: float = 1.0             # A14B: the high-noise expert's
    strength_low: float | None = None  # A14B: the low-noise expert's (None: see resolve)


def parse_lora_arg(text: str, field: str = "--lora") -> LoraChoice:
    """`FILE[:STRENGTH[:STRENGTH_LOW]]`. Strengths are read after the file's `.safetensors`, so a Windows
    path (`C:\\loras\\x.safetensors:0.8`) keeps its drive colon."""
    text = text.strip()
    if not text:
        raise UserError(field, "no LoRA file given", "use --lora FILE[:STRENGTH[:STRENGTH_LOW]]")
    end = text.lower().rfind(".safetensors")
    if end >= 0:
        file, rest = text[: end + len(".safetensors")], text[end + len(".safetensors"):]
        if rest and not rest.startswith(":"):
            raise UserError(field, f"{text!r}: unexpected {rest!r} after the file name",
                            "use --lora FILE[:STRENGTH[:STRENGTH_LOW]]")
        parts = rest[1:].split(":") if rest else []
    else:                                 # an item name without extension: numbers at the end are strengths
        pieces = text.split(":")
        parts = []
        while len(pieces) > 1 and len(parts) < 2 and _numeric(pieces[-1]):
            parts.insert(0, pieces.pop())
        file = ":".join(pieces)
    if len(parts) > 2:
        raise UserError(field, f"{text!r} has {len(parts)} strengths", "give at most two: high-noise and low-noise")
    s = check_strength(parts[0], f"{field} strength") if parts else 1.0
    s_low = check_strength(parts[1], f"{field} low-noise strength") if len(parts) > 1 else None
    return LoraChoice(file, s, s_low)


def _numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class LoraUse:
    """One chosen item, resolved: (expert, file, strength) per expert that loads it."""
    item: str
    strength: float
    strength_low: float | None
    apply: tuple[tuple[str, LoraFile, float], ...]     # expert "only" | "high" | "low"; no zero strengths

    def metadata(self) -> dict:
        """For the video's metadata: enough to restore the choice and to tell the exact files."""
        return {"item": self.item, "strength": self.strength, "strength_low": self.strength_low,
                "files": [{"expert": e, "file": f.name, "sha256_header": lora_id(f.path), "strength": s}
                          for e, f, s in self.apply]}


def resolve(choices: list[LoraChoice], spec: ModelSpec, available: list[LoraFile]) -> list[LoraUse]:
    """Find each choice's file(s), check they fit `spec` (header shapes) and assign strengths per expert.

    A14B: `strength` goes to the high-noise expert and `strength_low` to the low-noise one. A high/low
    pair applies its high file to the high expert and its low file to the low one; with no strength_low
    the low expert takes `strength` too. A single file named for one expert (`…high_noise…`) loads there
    only, unless two strengths are given. Any other file loads on both experts. A strength of 0 means
    that expert does not load the file."""
    uses = []
    two = spec.experts == 2
    items = group_items(available)
    for c in choices:
        s = check_strength(c.strength, "lora strength")
        s_low = None if c.strength_low is None else check_strength(c.strength_low, "lora low-noise strength")
        if s_low is not None and not two:
            raise UserError("lora", f"{c.file}: a second (low-noise) strength is only for Wan2.2 A14B's two "
                                    f"experts; {spec.name} has one", "give one strength")
        item = _find(c.file, items, available)
        if item.is_pair and not two:
            raise UserError("lora", f"{item.name} is a high/low pair for Wan2.2 A14B's two experts; {spec.name} "
                                    "has one", "choose a LoRA made for this model")
        for f in item.files:
            f.check_fits(spec)
        if not two:
            plan = [("only", item.file or item.files[0], s)]
        elif item.is_pair:
            plan = [("high", item.high, s), ("low", item.low, s if s_low is None else s_low)]
        else:
            f = item.files[0]
            high = s if s_low is not None or f.expert != "low" else 0.0
            low = s_low if s_low is not None else (s if f.expert != "high" else 0.0)
            plan = [("high", f, high), ("low", f, low)]
        uses.append(LoraUse(item.name, s, s_low, tuple((e, f, st) for e, f, st in plan if st != 0.0)))
    return uses


def _find(name: str, items: list[LoraItem], available: list[LoraFile]) -> LoraItem:
    for it in items:
        if name == it.name:
            return it
    p = Path(name).expanduser()
    for it in items:
        for f in it.files:
            if name in (f.name, f.path.stem, str(f.path)) or (p.is_absolute() and p == f.path):
                return it
    if p.suffix == ".safetensors" and p.is_file():
        return LoraItem(p.name, file=identify(p))
    known = ", ".join(sorted(it.name for it in items)[:8]) or "none found"
    raise UserError("lora", f"{name!r} is neither a file nor a LoRA found in a loras/ folder",
                    f"put it in <models folder>/loras/ or give its path; found: {known}")


def per_expert(uses: list[LoraUse]) -> dict[str, list[tuple[Path, float]]]:
    """expert -> [(file, strength)]: what the engine loads and attaches for each transformer."""
    out: dict[str, list[tuple[Path, float]]] = {}
    for u in uses:
        for e, f, s in u.apply:
            out.setdefault(e, []).append((f.path, s))
    return out


def choices_from_metadata(entries: list[dict]) -> list[LoraChoice]:
    """'Load settings from this video': the choices a video's metadata recorded."""
    out = []
    for e in entries or []:
        try:
            out.append(LoraChoice(str(e["item"]), float(e["strength"]),
                                  None if e.get("strength_low") is None else float(e["strength_low"])))
        except (KeyError, TypeError, ValueError):
            raise UserError("lora", f"the video's LoRA record {e!r} is not readable",
                            "pick the LoRAs again by hand") from None
    return out


def changed_files(entries: list[dict], uses: list[LoraUse]) -> list[str]:
    """Files whose header hash differs from what a video recorded (same name, other file)."""
    recorded = {(f["expert"], f["file"]): f.get("sha256_header") for e in entries or [] for f in e.get("files", [])}
    return [f"{f.name} ({e}) is not the file this video used" for u in uses for e, f, _ in u.apply
            if recorded.get((e, f.name)) not in (None, lora_id(f.path))]
