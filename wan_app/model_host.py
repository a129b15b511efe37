"""The loaded models: components, how the plan placed them, the text encoder's life and the prompt cache.

Kept between runs while the files and the plan allow, so a second prompt costs no load. Everything here
is about *which weights are where*; the loop that uses them is wan_app.sampler.
"""
from __future__ import annotations

import gc
import html
import re
from collections import OrderedDict
from typing import Callable

import torch

from . import events
from .checkpoints import build_text_encoder, load_components, load_transformer
from .memory import apply_plan
from .plan_types import Plan
from .vae_codec import VaeCodec

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_EMBED_CACHE_SIZE = 32


def clean_prompt(text: str) -> str:
    """As the official tokenizer wrapper (wan/modules/tokenizers.py, clean='whitespace') does: ftfy's
    fix_text, html.unescape twice, then whitespace collapsed. "a cat &amp; a dog" = "a cat & a dog"."""
    import ftfy
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def _text_encoder_dtype(plan: Plan) -> torch.dtype:
    """umT5's dtype; in an fp8 plan, that of the parts not stored in fp8 (embeddings, norms, wo)."""
    return TORCH_DTYPES.get(plan.text_encoder_dtype, TORCH_DTYPES[plan.compute_dtype])


class ModelHost:
    def __init__(self):
        self.components = None
        self.placement = None
        self.codec: VaeCodec | None = None
        self._comp_key = self._place_key = None
        self._files = self._plan = None
        self._embeds: OrderedDict = OrderedDict()
        self._lora_handles: list = []
        self.truncated: dict[str, int] = {}          # prompt -> tokens cut by the 512-token limit

    # ---- weights ----------------------------------------------------------------------------------
    def load(self, files, plan: Plan, emit: Callable[[events.Event], None], loras=()):
        """Load (or reuse) the components, attach the LoRAs (wan_app.lora.LoraUse) and apply the plan."""
        from .lora import per_expert
        comp_key = (files.key(), plan.compute_dtype, plan.weight_dtype, plan.text_encoder_dtype,
                    plan.experts_resident)
        wanted = {which: tuple((str(p), s) for p, s in pairs) for which, pairs in per_expert(list(loras)).items()}
        place_key = (comp_key, plan.device, plan.blocks_swapped, plan.attention_backend, plan.vae_tiling,
                     plan.text_encoder_device, plan.compiled, tuple(sorted(wanted.items())))
        if self.placement is not None and self._place_key == place_key:
            return
        # fp8 storage cannot be undone in place, so a new fp8 placement reloads.
        self.unload(keep_components=self._comp_key == comp_key and plan.weight_dtype != "fp8")
        # Built in the storage dtype one tensor at a time (a tensor already in it stays memory-mapped);
        # fp8 plans keep the block linears fp8 and the rest in the compute dtype.
        compute = TORCH_DTYPES[plan.compute_dtype]
        if self.components is None:
            emit(events.Progress("load", message=f"loading {files.spec.name}"))
            self.components = load_components(
                files, dtype=compute, storage_dtype=plan.weight_dtype, experts=plan.experts_resident,
                text_encoder_dtype=_text_encoder_dtype(plan), fp8=plan.weight_dtype == "fp8",
                text_encoder_fp8=plan.text_encoder_dtype == "fp8")
            self.codec = VaeCodec(self.components.vae, plan.device, self.components.sources.get("vae"))
            self._comp_key = comp_key
        notices: list[str] = []
        # LoRAs go on before the plan: a swapped block's LoRA tensors must be in it when the swapper
        # records the block, so they cross the bus with it.
        for which in ("only", "high", "low"):
            self._attach(which, wanted.get(which, ()), compute, notices)

        def load_expert(which):
            model = load_transformer(files, which, dtype=compute, storage_dtype=plan.weight_dtype,
                                     fp8=plan.weight_dtype == "fp8")
            self._attach(which, wanted.get(which, ()), compute, notices, model)
            return model
        self.placement = apply_plan(plan, self.components, notify=notices.append, load_expert=load_expert)
        self.codec.device = torch.device(plan.device)
        for n in notices:
            emit(events.Notice(n))
        self._place_key, self._files, self._plan = place_key, files, plan

    def _attach(self, which: str, pairs, compute, notices: list[str], model=None) -> None:
        from .lora import attach, load_lora
        model = model or getattr(self.components, "transformer_2" if which == "low" else "transformer")
        if model is None or not pairs:
            return
        handle = attach(model, [(load_lora(path, model), s) for path, s in pairs], dtype=compute)
        notices.extend(handle.notices)
        self._lora_handles.append(handle)

    def unload(self, keep_components: bool = False) -> None:
        if self.placement is not None:
            self.placement.release()
            self.placement = None
        for handle in self._lora_handles:       # after the release: the swap hooks are off by then
            handle.remove()
        self._lora_handles = []
        self._place_key = None
        if not keep_components:
            self.components = self.codec = None
            self._comp_key = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- text ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """umT5 embeddings trimmed to the real tokens, zero-padded to 512 (the padding is attended:
        hand-made unpadded embeddings give a different video). Cached per text. No negative prompt
        (CFG 1: one forward per step) means it is not encoded at all."""
        out = []
        for text in (prompt, negative_prompt):
            if text is None:
                out.append(None)
                continue
            key = (self.components.sources.get("text_encoder"), clean_prompt(text))
            if key not in self._embeds:
                if self.components.text_encoder is None:      # dropped after the last prompt to save RAM
                    self.components.text_encoder = build_text_encoder(
                        self._files.text_encoder, _text_encoder_dtype(self._plan),
                        fp8=self._plan.text_encoder_dtype == "fp8")
                self._embeds[key] = self._encode_text(key[1])
                while len(self._embeds) > _EMBED_CACHE_SIZE:
                    self._embeds.popitem(last=False)
            self._embeds.move_to_end(key)
            out.append(self._embeds[key])
        if self._plan.text_encoder_kept:
            self.placement.text_encoder_done()
        else:
            self.placement.drop_text_encoder()
        return out[0], out[1]

    def _encode_text(self, text: str) -> torch.Tensor:
        comps = self.components
        text_len = comps.spec.text_len
        tok = comps.tokenizer([text], padding="max_length", max_length=text_len, truncation=True,
                              add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        full = len(comps.tokenizer(text, add_special_tokens=True).input_ids)
        if full > text_len:
            self.truncated[text] = full - text_len
        device = self.placement.text_encoder_device()
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        hidden = comps.text_encoder(ids, mask).last_hidden_state
        n = int(mask.gt(0).sum())
        emb = torch.zeros(1, text_len, hidden.shape[-1], dtype=hidden.dtype)
        emb[0, :n] = hidden[0, :n].to("cpu")
        return emb

    def tokens_cut(self, prompt: str) -> int:
        """Tokens past umT5's 512 that the last encoding of this prompt dropped (0 if none)."""
        return self.truncated.get(clean_prompt(prompt), 0)
