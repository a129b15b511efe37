"""Step caches: skip a transformer forward and reuse the blocks' residual of the last computed one.

Both methods keep the model's embeddings and output head running on every forward and replace only the
block loop: output_of_blocks = input_of_blocks + residual, where the residual (blocks' output minus
their input) was stored by the last forward that ran the blocks, per CFG branch (cond / uncond), as the
published code does (MagCache4Wan2.1/2.2 `magcache_forward`, TeaCache4Wan2.1 `teacache_forward`).

- MagCache decides from a published table of magnitude ratios per step and branch, a threshold, the
  most consecutive skips K and a retention ratio (early forwards never skipped). Nothing of the run
  enters the decision, so the whole skip schedule is computed here before the run (`MagCache.schedule`)
  and the plan can say exactly what will be skipped.
- TeaCache decides per forward from the model's timestep embedding (the relative L1 change since the
  branch's last forward, rescaled by a published polynomial, accumulated up to a threshold). Wan2.1
  only, as published. For Wan the embedding depends on the timestep alone, so `TeaCache.predict(model,
  timesteps)` gives the same decisions before the run; the run still decides from what it computes.

Tables, coefficients and defaults are the published ones; docs/STEP_CACHES.md lists them with their
sources and a test keeps that file and these constants equal.

Why by hand and not diffusers' hooks (0.42.1 has MagCacheConfig / apply_mag_cache, FirstBlockCacheConfig,
TaylorSeer, no TeaCache):
- diffusers' MagCache takes one ratio curve for every forward, while the Wan tables interleave a cond
  and an uncond curve; it keeps one accumulator per cache context, where the Wan code keeps one per
  branch; and it has no per-expert retention window for the two A14B experts;
- its skip is done inside block hooks: every block module is still called, so the forward pre-hooks of
  wan_app.blockswap would copy every swapped block to the GPU for a forward that does not use it;
- FirstBlockCache / TaylorSeer are other methods (they run the first block, or extrapolate features),
  not the published Wan schedules the issue asks for.
So here the block loop itself is replaced for the length of one forward: the model's `blocks` list is
swapped for a one-module list whose module either replays the residual or calls the real blocks (their
hooks — block swap, LoRA — run as usual), and put back by a forward hook that runs even on an error.

Use (what the sampler does):

    cache = stepcache.for_request(req, spec, kind="magcache", threshold=None, batched=plan.cfg_batched)
    cache.attach(model)                  # every transformer (both A14B experts)
    for i, t in ...: cache.begin_step(i, expert) ; ... model(...) once per branch, cond first ...
    cache.forwards_run, cache.forwards_skipped, cache.describe()
    cache.detach_all()
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .errors import UserError

KINDS = ("off", "magcache", "teacache")
BRANCHES = ("cond", "uncond")
# A threshold is an accumulated error bound; the published values lie in 0.02-0.5. Above 1 every
# allowed skip is taken (MagCache) or the polynomial is far outside the range it was fitted on (TeaCache).
THRESHOLD_MAX = 1.0

# ---- published MagCache tables ----------------------------------------------------------------------
# Zehong-Ma/MagCache @ df81cb181776c2c61477c08e1d21f87fda1cd938: MagCache4Wan2.1/magcache_generate.py
# (T2V 1.3B and 14B, `mag_ratios`) and MagCache4Wan2.2/magcache_generate.py (T2V A14B, TI2V 5B t2v / i2v).
# Each list interleaves cond and uncond ratios from the second step on; the code pads it with [1.0]*2.
# I2V: MagCache4Wan2.1 `mag_ratios` for '480P' / '720P' (Wan2.1 I2V 14B) and MagCache4Wan2.2's i2v-A14B.
_MAG_T2V_1_3B = (
    1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762, 0.99634, 0.99685, 0.99567,
    0.99586, 0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563, 0.99511, 0.99506, 0.99535, 0.99531,
    0.99552, 0.99549, 0.99541, 0.99539, 0.9954, 0.99536, 0.99489, 0.99485, 0.99518, 0.99514, 0.99484,
    0.99478, 0.99481, 0.99479, 0.99415, 0.99413, 0.99419, 0.99416, 0.99396, 0.99393, 0.99388, 0.99386,
    0.99349, 0.99349, 0.99309, 0.99304, 0.9927, 0.9927, 0.99228, 0.99226, 0.99171, 0.9917, 0.99137, 0.99135,
    0.99068, 0.99063, 0.99005, 0.99003, 0.98944, 0.98942, 0.98849, 0.98849, 0.98758, 0.98757, 0.98644,
    0.98643, 0.98504, 0.98503, 0.9836, 0.98359, 0.98202, 0.98201, 0.97977, 0.97978, 0.97717, 0.97718,
    0.9741, 0.97411, 0.97003, 0.97002, 0.96538, 0.96541, 0.9593, 0.95933, 0.95086, 0.95089, 0.94013,
    0.94019, 0.92402, 0.92414, 0.90241, 0.9026, 0.86821, 0.86868, 0.81838, 0.81939
)
_MAG_T2V_14B = (
    1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771, 0.9966, 0.99658, 0.99482,
    0.99476, 0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431, 0.99533, 0.99545, 0.99468, 0.99465,
    0.99438, 0.99434, 0.99516, 0.99517, 0.99384, 0.9938, 0.99404, 0.99401, 0.99517, 0.99516, 0.99409,
    0.99408, 0.99428, 0.99426, 0.99347, 0.99343, 0.99418, 0.99416, 0.99271, 0.99269, 0.99313, 0.99311,
    0.99215, 0.99215, 0.99218, 0.99215, 0.99216, 0.99217, 0.99163, 0.99161, 0.99138, 0.99135, 0.98982,
    0.9898, 0.98996, 0.98995, 0.9887, 0.98866, 0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857, 0.98501,
    0.98498, 0.9838, 0.98376, 0.98177, 0.98173, 0.98037, 0.98035, 0.97678, 0.97677, 0.97546, 0.97543,
    0.97184, 0.97183, 0.96711, 0.96708, 0.96349, 0.96345, 0.95629, 0.95625, 0.94926, 0.94929, 0.93964,
    0.93961, 0.92511, 0.92504, 0.90693, 0.90678, 0.8796, 0.87945, 0.86111, 0.86189
)
_MAG_T2V_A14B = (
    1.00124, 1.00155, 0.99822, 0.99851, 0.99696, 0.99687, 0.99703, 0.99732, 0.9966, 0.99679, 0.99602,
    0.99658, 0.99578, 0.99664, 0.99484, 0.9949, 0.99633, 0.996, 0.99659, 0.99683, 0.99534, 0.99549, 0.99584,
    0.99577, 0.99681, 0.99694, 0.99563, 0.99554, 0.9944, 0.99473, 0.99594, 0.9964, 0.99466, 0.99461,
    0.99453, 0.99481, 0.99389, 0.99365, 0.99391, 0.99406, 0.99354, 0.99361, 0.99283, 0.99278, 0.99268,
    0.99263, 0.99057, 0.99091, 0.99125, 0.99126, 0.65523, 0.65252, 0.98808, 0.98852, 0.98765, 0.98736,
    0.9851, 0.98535, 0.98311, 0.98339, 0.9805, 0.9806, 0.97776, 0.97771, 0.97278, 0.97286, 0.96731, 0.96728,
    0.95857, 0.95855, 0.94385, 0.94385, 0.92118, 0.921, 0.88108, 0.88076, 0.80263, 0.80181
)
_MAG_TI2V_5B_T2V = (
    0.99505, 0.99389, 0.99441, 0.9957, 0.99558, 0.99551, 0.99499, 0.9945, 0.99534, 0.99548, 0.99468, 0.9946,
    0.99463, 0.99458, 0.9946, 0.99453, 0.99408, 0.99404, 0.9945, 0.99441, 0.99409, 0.99398, 0.99403,
    0.99397, 0.99382, 0.99377, 0.99349, 0.99343, 0.99377, 0.99378, 0.9933, 0.99328, 0.99303, 0.99301,
    0.99217, 0.99216, 0.992, 0.99201, 0.99201, 0.99202, 0.99133, 0.99132, 0.99112, 0.9911, 0.99155, 0.99155,
    0.98958, 0.98957, 0.98959, 0.98958, 0.98838, 0.98835, 0.98826, 0.98825, 0.9883, 0.98828, 0.98711,
    0.98709, 0.98562, 0.98561, 0.98511, 0.9851, 0.98414, 0.98412, 0.98284, 0.98282, 0.98104, 0.98101,
    0.97981, 0.97979, 0.97849, 0.97849, 0.97557, 0.97554, 0.97398, 0.97395, 0.97171, 0.97166, 0.96917,
    0.96913, 0.96511, 0.96507, 0.96263, 0.96257, 0.95839, 0.95835, 0.95483, 0.95475, 0.94942, 0.94936,
    0.9468, 0.94678, 0.94583, 0.94594, 0.94843, 0.94872, 0.96949, 0.97015
)
_MAG_TI2V_5B_I2V = (
    0.99512, 0.99559, 0.99559, 0.99561, 0.99595, 0.99577, 0.99512, 0.99512, 0.99546, 0.99534, 0.99543,
    0.99531, 0.99496, 0.99491, 0.99504, 0.99499, 0.99444, 0.99449, 0.99481, 0.99481, 0.99435, 0.99435,
    0.9943, 0.99431, 0.99411, 0.99406, 0.99373, 0.99376, 0.99413, 0.99405, 0.99363, 0.99359, 0.99335,
    0.99331, 0.99244, 0.99243, 0.99229, 0.99229, 0.99239, 0.99236, 0.99163, 0.9916, 0.99149, 0.99151,
    0.99191, 0.99192, 0.9898, 0.98981, 0.9899, 0.98987, 0.98849, 0.98849, 0.98846, 0.98846, 0.98861,
    0.98861, 0.9874, 0.98738, 0.98588, 0.98589, 0.98539, 0.98534, 0.98444, 0.98439, 0.9831, 0.98309,
    0.98119, 0.98118, 0.98001, 0.98, 0.97862, 0.97859, 0.97555, 0.97558, 0.97392, 0.97388, 0.97152, 0.97145,
    0.96871, 0.9687, 0.96435, 0.96434, 0.96129, 0.96127, 0.95639, 0.95638, 0.95176, 0.95175, 0.94446,
    0.94452, 0.93972, 0.93974, 0.93575, 0.9359, 0.93537, 0.93552, 0.96655, 0.96616
)


_MAG_I2V_14B_480P = (
    0.98783, 0.98993, 0.97559, 0.97593, 0.98311, 0.98319, 0.98202, 0.98225, 0.9888, 0.98878, 0.98762,
    0.98759, 0.98957, 0.98971, 0.99052, 0.99043, 0.99383, 0.99384, 0.98857, 0.9886, 0.99065, 0.99068,
    0.98845, 0.98847, 0.99057, 0.99057, 0.98957, 0.98961, 0.98601, 0.9861, 0.98823, 0.98823, 0.98756,
    0.98759, 0.98808, 0.98814, 0.98721, 0.98724, 0.98571, 0.98572, 0.98543, 0.98544, 0.98157, 0.98165,
    0.98411, 0.98413, 0.97952, 0.97953, 0.98149, 0.9815, 0.9774, 0.97742, 0.97825, 0.97826, 0.97355,
    0.97361, 0.97085, 0.97087, 0.97056, 0.97055, 0.96588, 0.96587, 0.96113, 0.96124, 0.9567, 0.95681,
    0.94961, 0.94969, 0.93973, 0.93988, 0.93217, 0.93224, 0.91878, 0.91896, 0.90955, 0.90954, 0.92617,
    0.92616
)
_MAG_I2V_14B_720P = (
    0.99428, 0.99498, 0.98588, 0.98621, 0.98273, 0.98281, 0.99018, 0.99023, 0.98911, 0.98917, 0.98646,
    0.98652, 0.99454, 0.99456, 0.9891, 0.98909, 0.99124, 0.99127, 0.99102, 0.99103, 0.99215, 0.99212,
    0.99515, 0.99515, 0.99576, 0.99572, 0.99068, 0.99072, 0.99097, 0.99097, 0.99166, 0.99169, 0.99041,
    0.99042, 0.99201, 0.99198, 0.99101, 0.99101, 0.98599, 0.98603, 0.98845, 0.98844, 0.98848, 0.98851,
    0.98862, 0.98857, 0.98718, 0.98719, 0.98497, 0.98497, 0.98264, 0.98263, 0.98389, 0.98393, 0.97938,
    0.9794, 0.97535, 0.97536, 0.97498, 0.97499, 0.973, 0.97301, 0.96827, 0.96828, 0.96261, 0.96263, 0.95335,
    0.9534, 0.94649, 0.94655, 0.93397, 0.93414, 0.91636, 0.9165, 0.89088, 0.89109, 0.8679, 0.86768
)
_MAG_I2V_A14B = (
    0.99191, 0.99144, 0.99356, 0.99337, 0.99326, 0.99285, 0.99251, 0.99264, 0.99393, 0.99366, 0.9943,
    0.9943, 0.99276, 0.99288, 0.99389, 0.99393, 0.99274, 0.99289, 0.99316, 0.9931, 0.99379, 0.99377,
    0.99268, 0.99271, 0.99222, 0.99227, 0.99175, 0.9916, 0.91076, 0.91046, 0.98931, 0.98933, 0.99087,
    0.99088, 0.98852, 0.98855, 0.98895, 0.98896, 0.98806, 0.98808, 0.9871, 0.98711, 0.98613, 0.98618,
    0.98434, 0.98435, 0.983, 0.98307, 0.98185, 0.98187, 0.98131, 0.98131, 0.9783, 0.97835, 0.97619, 0.9762,
    0.97264, 0.9727, 0.97088, 0.97098, 0.96568, 0.9658, 0.96045, 0.96055, 0.95322, 0.95335, 0.94579,
    0.94594, 0.93297, 0.93311, 0.91699, 0.9172, 0.89174, 0.89202, 0.8541, 0.85446, 0.79823, 0.79902
)

MAGCACHE_SOURCE = "https://github.com/Zehong-Ma/MagCache (commit df81cb18, MagCache4Wan2.1/2.2 magcache_generate.py)"
TEACACHE_SOURCE = "https://github.com/ali-vilab/TeaCache (commit 7c10efc4, TeaCache4Wan2.1/teacache_generate.py)"


@dataclass(frozen=True)
class MagTable:
    model: str                   # catalog id the table was calibrated on
    ratios: tuple[float, ...]    # as published: cond/uncond interleaved, without the [1.0]*2 padding
    threshold: float             # defaults: the published example command for that model (README)
    max_skips: int               # K
    retention: float             # R
    switch: int | None = None    # A14B: first low-noise step of the calibration run
    mode: str = "t2v"            # A14B retention rule of MagCache4Wan2.2: "t2v" or "i2v"

    @property
    def steps(self) -> int:
        return len(self.ratios) // 2 + 1

    def curves(self) -> tuple[np.ndarray, np.ndarray]:
        """(cond, uncond) ratio per calibration step, padding included."""
        padded = np.array([1.0, 1.0, *self.ratios])
        return padded[0::2], padded[1::2]


# Defaults: MagCache4Wan2.1/README.md commands (1.3B: --magcache_K 4 --retention_ratio 0.2
# --magcache_thresh 0.12; 14B: K 6, R 0.2, E 0.24); MagCache4Wan2.2/README.md (T2V A14B: E 0.06, R 0.4,
# K 2 by default; TI2V 5B: E 0.06, K 2, R 0.2; I2V A14B: E 0.06, K 2, R 0.1); Wan2.1 I2V 14B 480P and
# 720P: K 6, E 0.24, R 0.2 (MagCache4Wan2.1/README.md). The T2V A14B table dips to 0.655 at step 26 of
# 40: the residual changes when the low-noise expert takes over, which is the switch of the official
# schedule (docs/WAN_FACTS.md: 40 steps at shift 12 give 26 high + 14 low); the I2V A14B one dips to
# 0.911 at step 15 (shift 5, boundary 0.900: 15 high + 25 low).
MAG_TABLES: dict[str, MagTable] = {
    "wan2.1-t2v-1.3b": MagTable("wan2.1-t2v-1.3b", _MAG_T2V_1_3B, 0.12, 4, 0.2),
    "wan2.1-t2v-14b": MagTable("wan2.1-t2v-14b", _MAG_T2V_14B, 0.24, 6, 0.2),
    "wan2.2-t2v-a14b": MagTable("wan2.2-t2v-a14b", _MAG_T2V_A14B, 0.06, 2, 0.4, switch=26),
    "wan2.2-ti2v-5b": MagTable("wan2.2-ti2v-5b", _MAG_TI2V_5B_T2V, 0.06, 2, 0.2),
    "wan2.2-ti2v-5b/i2v": MagTable("wan2.2-ti2v-5b", _MAG_TI2V_5B_I2V, 0.06, 2, 0.2),
    "wan2.1-i2v-14b-480p": MagTable("wan2.1-i2v-14b-480p", _MAG_I2V_14B_480P, 0.24, 6, 0.2),
    "wan2.1-i2v-14b-720p": MagTable("wan2.1-i2v-14b-720p", _MAG_I2V_14B_720P, 0.24, 6, 0.2),
    "wan2.2-i2v-a14b": MagTable("wan2.2-i2v-a14b", _MAG_I2V_A14B, 0.06, 2, 0.1, switch=15, mode="i2v"),
}

# ---- published TeaCache coefficients (TeaCache4Wan2.1/teacache_generate.py) ---------------------------
@dataclass(frozen=True)
class TeaTable:
    model: str
    coefficients: tuple[float, ...]   # np.poly1d order: highest power first
    mode: str                         # "e": time embedding; "e0": its projection (use_ret_steps)
    threshold: float                  # README: the "slow" (closer to the original) setting
    retention_steps: int              # first steps always computed (ret_steps / 2)
    final_computed: int               # last steps always computed ((2N - cutoff_steps) / 2)


# README: use_ret_steps gives "faster generation speed and better generation quality (except for
# t2v-1.3B)", so 1.3B keeps the plain mode (e, thresholds 0.05 / 0.08) and the 14B models use e0
# (T2V 0.10 / 0.20; I2V 480P and 720P 0.20 / 0.30).
TEA_TABLES: dict[str, TeaTable] = {
    "wan2.1-t2v-1.3b": TeaTable("wan2.1-t2v-1.3b",
                                (2.39676752e+03, -1.31110545e+03, 2.01331979e+02, -8.29855975e+00, 1.37887774e-01),
                                "e", 0.05, 1, 1),
    "wan2.1-t2v-14b": TeaTable("wan2.1-t2v-14b",
                               (-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01),
                               "e0", 0.10, 5, 0),
    "wan2.1-i2v-14b-480p": TeaTable("wan2.1-i2v-14b-480p",
                                    (2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01),
                                    "e0", 0.20, 5, 0),
    "wan2.1-i2v-14b-720p": TeaTable("wan2.1-i2v-14b-720p",
                                    (8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02),
                                    "e0", 0.20, 5, 0),
}

# Tiny test models borrow the table of the model they imitate, so their runs take every code path; the
# tiny weights have nothing to do with those ratios.
STAND_INS = {"tiny-wan2.1-t2v": "wan2.1-t2v-1.3b", "tiny-wan2.2-t2v-a14b": "wan2.2-t2v-a14b",
             "tiny-wan2.2-ti2v-5b": "wan2.2-ti2v-5b", "tiny-wan2.1-i2v": "wan2.1-i2v-14b-480p",
             "tiny-wan2.2-i2v-a14b": "wan2.2-i2v-a14b"}


def nearest_interp(src: np.ndarray, n: int) -> np.ndarray:
    """The published `nearest_interp`: a curve of another length by nearest index (numpy rounding)."""
    if n <= 0:
        return np.zeros(0)
    if n == 1:
        return np.array([src[-1]])
    idx = np.round(np.arange(n) * ((len(src) - 1) / (n - 1))).astype(int)
    return np.asarray(src)[idx]


# ---- validation -------------------------------------------------------------------------------------
def _table_key(spec, image: bool) -> str:
    model = STAND_INS.get(spec.id, spec.id)
    return f"{model}/i2v" if image and f"{model}/i2v" in MAG_TABLES else model


def check(kind: str | None, spec, threshold: float | None = None) -> str:
    """The cache kind ("off" for None), or UserError naming `cache` / `cache_threshold`."""
    kind = "off" if kind in (None, "", "none") else str(kind).lower()
    if kind not in KINDS:
        raise UserError("cache", f"'{kind}' is not a step cache", "use off, magcache or teacache")
    if kind == "off":
        return kind
    model = STAND_INS.get(spec.id, spec.id)
    tables = MAG_TABLES if kind == "magcache" else TEA_TABLES
    if model not in tables:
        have = sorted({t.model for t in tables.values()})
        other = "magcache" if kind == "teacache" else "off"
        raise UserError("cache", f"{kind} has no published table for {spec.name}",
                        f"it has tables for {', '.join(have)}; use --cache {other}")
    if threshold is not None:
        ok = isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold)
        if not ok or not 0.0 <= threshold <= THRESHOLD_MAX:
            raise UserError("cache_threshold", f"{threshold!r} is outside 0..{THRESHOLD_MAX:g}",
                            f"use 0 (never skip) to {THRESHOLD_MAX:g}; {spec.name}'s published value is "
                            f"{tables[model].threshold:g}")
    return kind


# ---- the skip schedule of MagCache ------------------------------------------------------------------
def _retained(c: int, n: int, split: int | None, r: float, mode: str = "t2v") -> bool:
    """Forward `c` (= 2·step + branch) of `n` = 2·steps is never skipped: the published retention rule.
    Two experts (split = 2·first low step), as written in MagCache4Wan2.2 `magcache_forward`: t2v mode,
    the first R of each expert's forwards (the low window ends with `<=`); i2v mode, every high-noise
    forward and the first R of the low-noise ones."""
    if split is None:
        return c < int(n * r)
    if mode == "i2v":
        return c < int(split + (n - split) * r)
    return c < int(split * r) or (split <= c <= (n - split) * r + split)


def magcache_schedule(table: MagTable, experts: Sequence[str], passes: Sequence[int], threshold: float,
                      max_skips: int, retention: float, batched: bool = False) -> list[tuple[bool, bool]]:
    """(skip cond, skip uncond) for every step. Pure: the same inputs always give the same schedule.

    `experts[i]` is "only" / "high" / "low" and `passes[i]` 1 (cond only, CFG 1) or 2 for step i.
    The accumulators are those of the published code, one per branch; on top of it a branch is never
    skipped without a residual computed by the same expert (the published code would fail or reuse the
    other expert's). `batched`: cond and uncond run as one batch-2 forward, which is skipped only when
    both branches would be; when it runs, both branches' accumulators restart from their fresh residuals.
    """
    n_steps = len(experts)
    if len(passes) != n_steps:
        raise ValueError("experts and passes need one entry per step")
    cond, uncond = table.curves()
    switch = next((i for i, e in enumerate(experts) if e == "low"), None)
    if table.switch is None or switch is None:
        curves = [nearest_interp(cond, n_steps), nearest_interp(uncond, n_steps)]
    else:
        # each expert its own part of the curve, stretched to the steps it runs in this schedule
        s = table.switch
        curves = [np.concatenate([nearest_interp(c[:s], switch), nearest_interp(c[s:], n_steps - switch)])
                  for c in (cond, uncond)]
    split = 2 * switch if table.switch is not None and switch is not None else None
    n = 2 * n_steps
    ratio, count, err = [1.0, 1.0], [0, 0], [0.0, 0.0]
    have: list[str | None] = [None, None]            # expert whose residual each branch holds
    out: list[tuple[bool, bool]] = []
    for i in range(n_steps):
        run = (0, 1) if passes[i] == 2 else (0,)
        want = {}
        for b in run:
            c = 2 * i + b
            if _retained(c, n, split, retention, table.mode):
                want[b] = False
                continue
            ratio[b] *= float(curves[b][i])
            count[b] += 1
            err[b] += abs(1.0 - ratio[b])
            if err[b] < threshold and count[b] <= max_skips and have[b] == experts[i]:
                want[b] = True
            else:
                ratio[b], count[b], err[b] = 1.0, 0, 0.0
                want[b] = False
        if batched and len(run) == 2 and want[0] != want[1]:
            for b in run:
                if want[b]:
                    ratio[b], count[b], err[b] = 1.0, 0, 0.0
                want[b] = False
        for b in run:
            if not want[b]:
                have[b] = experts[i]
        out.append((want.get(0, False), want.get(1, False)))
    return out


# ---- the runtime part: one object per run --------------------------------------------------------
class _Replay(nn.Module):
    """Stands in for the whole block loop during one forward (see the module docstring)."""

    def __init__(self, cache: "StepCache", blocks: nn.ModuleList):
        super().__init__()
        self.cache = cache
        object.__setattr__(self, "real", blocks)      # not a sub-module: no second path to the weights

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb):
        return self.cache._blocks(self.real, hidden_states, encoder_hidden_states, temb, rotary_emb)


class StepCache:
    """What both caches share: steps and branches, residuals, the block-loop swap, the counts."""

    kind = "off"

    def __init__(self, spec, steps: int, threshold: float):
        self.spec, self.steps, self.threshold = spec, int(steps), float(threshold)
        self.forwards_run = 0
        self.forwards_skipped = 0
        self.log: list[tuple[int, str, bool]] = []          # (step, branch, skipped) of every forward
        self._step: int | None = None
        self._expert = "only"
        self._calls = 0                                     # forwards so far in this step
        self._residual: dict[str, tuple[str, torch.Tensor]] = {}   # branch -> (expert, residual)
        self._attached: dict[int, tuple[nn.Module, list]] = {}
        self._fwd: dict | None = None                       # the forward in flight

    # -- the sampler's side ----------------------------------------------------------------------------
    def begin_step(self, step: int, expert: str = "only") -> None:
        """Call before the forwards of each step (fits sampler.sample's `step_hooks`)."""
        self._step, self._expert, self._calls = int(step), expert, 0

    def attach(self, model: nn.Module) -> None:
        """Install on one WanTransformer3DModel (idempotent)."""
        if id(model) in self._attached:
            return
        handles = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                   model.register_forward_hook(self._post, always_call=True),
                   model.condition_embedder.register_forward_hook(self._embedded)]
        self._attached[id(model)] = (model, handles)

    def detach(self, model: nn.Module) -> None:
        entry = self._attached.pop(id(model), None)
        if entry:
            for h in entry[1]:
                h.remove()

    def detach_all(self) -> None:
        for model, _ in list(self._attached.values()):
            self.detach(model)

    def reset(self) -> None:
        """Forget residuals and counts (a re-run of the same window after an OOM re-plan)."""
        self.forwards_run = self.forwards_skipped = 0
        self.log.clear()
        self._residual.clear()
        self._step = None

    # -- the decision, per kind ----------------------------------------------------------------------
    def should_skip(self, step: int, expert: str, branch: str) -> bool:
        raise NotImplementedError

    def _decide(self, branches: tuple[str, ...], temb: torch.Tensor | None, proj: torch.Tensor) -> bool:
        """Skip this forward? (all its branches skip, each with a residual from this expert). `temb` is
        the time embedding, `proj` its projection as the blocks get it (TeaCache's e / e0)."""
        wants = [self.should_skip(self._step, self._expert, b) for b in branches]
        return all(wants) and all(self._has_residual(b) for b in branches)

    # -- residuals -------------------------------------------------------------------------------------
    def _has_residual(self, branch: str) -> bool:
        got = self._residual.get(branch)
        return got is not None and got[0] == self._expert

    def store_residual(self, step: int, branch: str, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        self._residual[branch] = (self._expert, x_out - x_in)

    def apply(self, x_in: torch.Tensor, branch: str) -> torch.Tensor:
        return x_in + self._residual[branch][1].to(x_in.device)

    # -- hooks -----------------------------------------------------------------------------------------
    def _branches(self, batch: int) -> tuple[str, ...]:
        if batch == 2:
            return BRANCHES
        if batch != 1:
            raise RuntimeError(f"step cache: a batch of {batch} is neither one branch nor a CFG pair")
        return (BRANCHES[min(self._calls, 1)],)

    def _pre(self, model, args, kwargs):
        if self._step is None:
            raise RuntimeError("step cache: begin_step() was not called before the forward")
        x = kwargs.get("hidden_states", args[0] if args else None)
        self._fwd = {"branches": self._branches(x.shape[0]), "temb": None, "ran": False,
                     "blocks": model._modules["blocks"]}
        model._modules["blocks"] = nn.ModuleList([_Replay(self, self._fwd["blocks"])])

    def _embedded(self, module, args, output):
        if self._fwd is not None:
            self._fwd["temb"] = output[0]

    def _blocks(self, real, hidden, context, temb, rope):
        f = self._fwd
        f["ran"] = True
        branches = f["branches"]
        skip = self._decide(branches, f["temb"], temb)
        for b in branches:
            self.log.append((self._step, b, skip))
        n = len(branches)
        if skip:
            self.forwards_skipped += n
            if n == 1:
                return self.apply(hidden, branches[0])
            return torch.cat([self.apply(hidden[k:k + 1], b) for k, b in enumerate(branches)])
        self.forwards_run += n
        x = hidden
        for block in real:
            x = block(x, context, temb, rope)
        for k, b in enumerate(branches):
            sl = slice(k, k + 1) if n > 1 else slice(None)
            self.store_residual(self._step, b, hidden[sl], x[sl])
        return x

    def _post(self, model, args, output):
        # registered with always_call: the real block list comes back even when the forward raised
        f, self._fwd = self._fwd, None
        if f is not None:
            model._modules["blocks"] = f["blocks"]
            self._calls += len(f["branches"])
            if not f["ran"] and output is not None:
                raise RuntimeError("step cache: the model's forward did not go through its block list")
        return output

    # -- reporting -------------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"kind": self.kind, "threshold": self.threshold, "steps": self.steps,
                "forwards_run": self.forwards_run, "forwards_skipped": self.forwards_skipped}


class MagCache(StepCache):
    kind = "magcache"

    def __init__(self, spec, table: MagTable, experts: Sequence[str], passes: Sequence[int],
                 threshold: float, max_skips: int, retention: float, batched: bool, table_key: str):
        super().__init__(spec, len(experts), threshold)
        self.table, self.table_key = table, table_key
        self.max_skips, self.retention, self.batched = int(max_skips), float(retention), bool(batched)
        self.experts, self.passes = list(experts), list(passes)
        self.schedule = magcache_schedule(table, experts, passes, threshold, max_skips, retention, batched)

    def should_skip(self, step: int, expert: str, branch: str) -> bool:
        return self.schedule[step][BRANCHES.index(branch)]

    def skipped_steps(self, branch: str = "cond") -> list[int]:
        b = BRANCHES.index(branch)
        return [i for i, s in enumerate(self.schedule) if s[b]]

    @property
    def planned_skips(self) -> int:
        return sum(int(c) + int(u) for c, u in self.schedule)

    def describe(self) -> dict:
        total = sum(self.passes)
        return {**super().describe(), "table": self.table_key, "source": MAGCACHE_SOURCE,
                "max_skips": self.max_skips, "retention": self.retention, "cfg_batched": self.batched,
                "planned_forwards": total, "planned_skips": self.planned_skips,
                "skipped_steps": {b: self.skipped_steps(b) for b in BRANCHES}}

    def summary(self) -> str:
        total = sum(self.passes)
        steps = self.skipped_steps("cond")
        return (f"Step cache: MagCache (threshold {self.threshold:g}, at most {self.max_skips} skips in a row, "
                f"first {self.retention:.0%} of each expert's steps kept) skips {self.planned_skips} of "
                f"{total} transformer forwards" + (f" (cond at steps {_ranges(steps)})" if steps else ""))


class TeaCache(StepCache):
    kind = "teacache"

    def __init__(self, spec, table: TeaTable, steps: int, passes: Sequence[int], threshold: float,
                 batched: bool, table_key: str):
        super().__init__(spec, steps, threshold)
        self.table, self.table_key, self.batched = table, table_key, bool(batched)
        self.passes = list(passes)
        self.mode = table.mode
        self._poly = np.poly1d(table.coefficients)
        self._prev: dict[str, torch.Tensor | None] = {b: None for b in BRANCHES}
        self._acc = {b: 0.0 for b in BRANCHES}
        self._pending: dict[str, bool] = {}          # this forward's decision per branch

    def reset(self) -> None:
        super().reset()
        self._prev = {b: None for b in BRANCHES}
        self._acc = {b: 0.0 for b in BRANCHES}

    def _always(self, step: int) -> bool:
        return step < self.table.retention_steps or step >= self.steps - self.table.final_computed

    def decide_branch(self, step: int, branch: str, modulated: torch.Tensor) -> bool:
        """The published per-forward rule for one branch; updates that branch's state."""
        cur = modulated.detach().float()
        prev = self._prev[branch]
        skip = False
        if self._always(step) or prev is None:
            self._acc[branch] = 0.0
        else:
            rel = ((cur - prev).abs().mean() / prev.abs().mean()).item()
            self._acc[branch] += float(self._poly(rel))
            if self.threshold > 0 and self._acc[branch] < self.threshold:
                skip = True
            else:
                self._acc[branch] = 0.0
        self._prev[branch] = cur.clone()
        return skip

    def should_skip(self, step: int, expert: str, branch: str) -> bool:
        return self._pending[branch]

    def _decide(self, branches, temb, proj) -> bool:
        modulated = temb if self.mode == "e" else proj
        if modulated is None:
            raise RuntimeError("TeaCache: the timestep embedding of this forward was not seen")
        rows = modulated if modulated.shape[0] == len(branches) else modulated.expand(len(branches), *modulated.shape[1:])
        self._pending = {b: self.decide_branch(self._step, b, rows[k:k + 1]) for k, b in enumerate(branches)}
        skip = all(self._pending.values()) and all(self._has_residual(b) for b in branches)
        if not skip:
            for b in branches:
                if self._pending[b]:
                    self._acc[b] = 0.0       # computed after all: its residual is fresh
        return skip

    @torch.no_grad()
    def predict(self, model: nn.Module, timesteps: Sequence) -> list[tuple[bool, bool]]:
        """The decisions a run over `timesteps` will make (Wan's timestep embedding depends on t only).
        Uses a copy of the state: the cache itself is not changed."""
        twin = TeaCache(self.spec, self.table, self.steps, self.passes, self.threshold, self.batched,
                        self.table_key)
        emb = model.condition_embedder
        p = next(emb.time_proj.parameters())
        ctx = torch.zeros(1, 1, emb.text_embedder.linear_1.in_features, device=p.device, dtype=p.dtype)
        out, have = [], {b: False for b in BRANCHES}
        for i, t in enumerate(timesteps):
            temb, proj, _, _ = emb(torch.as_tensor([int(t)], device=p.device), ctx)
            mod = temb if self.mode == "e" else proj
            run = BRANCHES if self.passes[i] == 2 else BRANCHES[:1]
            want = {b: twin.decide_branch(i, b, mod) for b in run}
            joint = all(want[b] and have[b] for b in run) if self.batched else None
            row = []
            for b in BRANCHES:
                if b not in run:
                    row.append(False)
                    continue
                s = joint if self.batched else (want[b] and have[b])
                if not s and want[b]:
                    twin._acc[b] = 0.0
                if not s:
                    have[b] = True
                row.append(bool(s))
            out.append(tuple(row))
        return out

    def describe(self) -> dict:
        return {**super().describe(), "table": self.table_key, "source": TEACACHE_SOURCE,
                "mode": self.mode, "coefficients": list(self.table.coefficients),
                "retention_steps": self.table.retention_steps, "final_computed": self.table.final_computed,
                "cfg_batched": self.batched, "decided": "per forward, from the timestep embedding"}

    def summary(self) -> str:
        return (f"Step cache: TeaCache (threshold {self.threshold:g}, {self.mode} mode; first "
                f"{self.table.retention_steps} step(s) always run) decides at each step whether to skip")


def _ranges(steps: list[int]) -> str:
    parts, start = [], None
    for k, s in enumerate(steps):
        if start is None:
            start = s
        if k + 1 == len(steps) or steps[k + 1] != s + 1:
            parts.append(f"{start}" if start == s else f"{start}-{s}")
            start = None
    return ", ".join(parts)


# ---- making one -------------------------------------------------------------------------------------
def make_cache(kind: str | None, spec, steps: int, threshold: float | None = None, *,
               experts: Sequence[str] | None = None, passes: Sequence[int] | int = 2,
               batched: bool = False, image: bool = False) -> StepCache | None:
    """The step cache for one run, or None when `kind` is off.

    `experts`: the expert of each step ("only" for single-expert models; A14B: sampling.expert_for of
    each timestep); `passes`: forwards per step (sampler.cfg_passes of that step's CFG scale), one number
    or one per step; `batched`: plan.cfg_batched; `image`: TI2V conditioned on clean first latents (its
    published i2v table). `threshold` None takes the published default. UserError for a kind without a
    table for this model or a threshold out of range.
    """
    kind = check(kind, spec, threshold)
    if kind == "off":
        return None
    experts = list(experts) if experts is not None else ["only"] * steps
    if len(experts) != steps:
        raise ValueError("experts needs one entry per step")
    if spec.experts == 2 and "only" in experts:
        raise ValueError("an A14B run needs the expert of each step (sampling.expert_for)")
    passes = [int(passes)] * steps if isinstance(passes, int) else [int(p) for p in passes]
    key = _table_key(spec, image)
    if kind == "magcache":
        t = MAG_TABLES[key]
        thr = t.threshold if threshold is None else float(threshold)
        return MagCache(spec, t, experts, passes, thr, t.max_skips, t.retention, batched, key)
    t = TEA_TABLES[key]
    return TeaCache(spec, t, steps, passes, t.threshold if threshold is None else float(threshold), batched, key)


def for_request(req, spec, kind: str | None, threshold: float | None = None, batched: bool = False,
                image: bool = False) -> StepCache | None:
    """make_cache for a resolved Request: the experts and CFG passes of its official schedule."""
    from . import sampling
    from .sampler import cfg_passes
    sched = sampling.official_schedule(req.solver, req.steps, req.shift)
    experts = [sampling.expert_for(t, req.boundary) for t in sched.timesteps]
    passes = [cfg_passes(req.guidance_2 if e == "low" else req.guidance) for e in experts]
    return make_cache(kind, spec, req.steps, threshold, experts=experts, passes=passes, batched=batched,
                      image=image)


def residual_gb(spec, tokens: int, compute_bytes: int, batched: bool = False) -> float:
    """Extra device memory (GB) while a cache is on: one residual per branch kept between forwards, the
    one being made, and the blocks' input held through a forward that computes (each [tokens, dim])."""
    per = tokens * spec.arch.dim * compute_bytes / 1e9
    return per * (3 + (2 if batched else 1))      # 2 kept, 1 being made, the input of 1 or 2 branches
