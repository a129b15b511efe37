"""Finding, identifying and loading checkpoints: the cases a user's models folder really has."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wan_app import catalog, tiny
from wan_app.checkpoints import convert, download_missing, identify_file, load_components, scan
from wan_app.checkpoints.load import build_transformer
from wan_app.errors import UserError

from .support import mapped_ranges


def copy_layout(tiny_root, layout: str, dst: Path) -> Path:
    shutil.copytree(tiny_root[layout].path, dst)
    return dst


def status_of(inv, model_id):
    return next(s for s in inv.status() if s.spec.id == model_id)


def test_comfyui_models_folder_works_as_is(tiny_root, tmp_path):
    root = copy_layout(tiny_root, "comfyui-fp16", tmp_path / "models")
    assert sorted(p.name for p in root.iterdir()) == ["diffusion_models", "text_encoders", "vae"]
    inv = scan([root])
    files = inv.resolve(tiny.T21)
    assert files.transformer.layout == "comfyui"
    assert files.tokenizer.path == files.text_encoder.path     # tokenizer read from spiece_model inside
    d = files.describe()
    assert d["model_id"] == tiny.T21 and d["transformer"]["dtype"] == "fp16"
    assert inv.runnable_ids() == [tiny.T21]     # same arch as tiny A14B, but no expert pair here


def test_one_scan_over_all_layouts_runs_every_tiny_model(tiny_root):
    root = next(iter(tiny_root.values())).path.parent
    inv = scan([root])
    assert set(inv.runnable_ids()) == {info.model_id for info in tiny_root.values()}
    assert {tiny.T21, tiny.A14, tiny.TI2V} <= set(inv.runnable_ids())
    # components are taken next to the chosen DiT, not from another layout
    files = inv.resolve(tiny.TI2V)
    assert Path(files.vae.path).parent.parent == Path(files.transformer.path).parent.parent or \
        Path(files.vae.path).parent == Path(files.transformer.path).parent


@pytest.mark.parametrize("component, folder, words", [
    ("text encoder", "text_encoders", "text encoder"),
    ("vae", "vae", "VAE"),
])
def test_missing_component_is_named_in_status(tiny_root, tmp_path, component, folder, words):
    root = copy_layout(tiny_root, "comfyui-fp16", tmp_path / "models")
    shutil.rmtree(root / folder)
    st = status_of(scan([root]), tiny.T21)
    assert not st.runnable
    assert any(words in m and f"{root}/{folder}/" in m for m in st.missing)
    with pytest.raises(UserError, match=words):
        scan([root]).resolve(tiny.T21)


def test_missing_tokenizer_is_named_in_status(tiny_root, tmp_path):
    root = copy_layout(tiny_root, "official-t2v", tmp_path / "models")
    shutil.rmtree(root / "google")
    st = status_of(scan([root]), tiny.T21)
    assert not st.runnable
    assert len(st.missing) == 1 and "tokenizer" in st.missing[0] and "umt5-xxl" in st.missing[0]


def test_missing_low_noise_expert_is_named(tiny_root, tmp_path):
    root = copy_layout(tiny_root, "official-a14b", tmp_path / "models")
    shutil.rmtree(root / "low_noise_model")
    st = status_of(scan([root]), tiny.A14)
    assert not st.runnable and st.missing == [m for m in st.missing if "low-noise expert" in m]
    # a lone 14B-shaped file inside high_noise_model/ is not mistaken for a single-expert model
    assert tiny.T21 not in scan([root]).runnable_ids()


def test_truncated_file_is_refused_naming_it(tiny_root, tmp_path):
    root = copy_layout(tiny_root, "comfyui-fp16", tmp_path / "models")
    dit = next((root / "diffusion_models").iterdir())
    data = dit.read_bytes()
    dit.write_bytes(data[: len(data) - 1000])
    inv = scan([root])
    assert tiny.T21 not in inv.runnable_ids()
    with pytest.raises(UserError) as e:
        inv.resolve(tiny.T21)
    assert dit.name in str(e.value) and "truncated" in str(e.value)


def test_text_encoder_of_the_wrong_width_is_refused_naming_it(tiny_root, tmp_path):
    root = copy_layout(tiny_root, "comfyui-fp16", tmp_path / "models")
    te = root / "text_encoders" / "umt5_xxl_fp16.safetensors"
    from safetensors import safe_open
    with safe_open(str(te), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    wide = {k: (torch.zeros(*[48 if s == tiny.TEXT_DIM else s for s in v.shape], dtype=v.dtype)
                if k != "spiece_model" else v) for k, v in sd.items()}
    te.unlink()
    save_file(wide, str(root / "text_encoders" / "umt5_other.safetensors"))
    with pytest.raises(UserError) as e:
        scan([root]).resolve(tiny.T21)
    assert "umt5_other.safetensors" in str(e.value) and "width 48" in str(e.value)


def test_vae_of_the_wrong_kind_is_refused_naming_it(tiny_root, tmp_path):
    root = copy_layout(tiny_root, "comfyui-fp16", tmp_path / "models")
    (root / "vae" / "wan_2.1_vae.safetensors").unlink()
    shutil.copy(tiny_root["comfyui-ti2v"].path / "vae" / "wan2.2_vae.safetensors", root / "vae")
    with pytest.raises(UserError) as e:
        scan([root]).resolve(tiny.T21)
    assert "wan2.2_vae.safetensors" in str(e.value) and "Wan2.2 VAE" in str(e.value)


def test_unknown_checkpoint_is_reported_not_loaded(tmp_path):
    p = tmp_path / "diffusion_models" / "some_lora.safetensors"
    p.parent.mkdir()
    save_file({"lora_unet_down.weight": torch.zeros(4, 4)}, str(p))
    inv = scan([tmp_path])
    assert inv.files[0].kind == "unknown" and "no Wan tensors" in inv.files[0].problem
    assert inv.runnable_ids() == []


def test_identification_ignores_file_names(tiny_root, tmp_path):
    src = next((tiny_root["comfyui-fp8-scaled"].path / "diffusion_models").iterdir())
    dst = tmp_path / "wan2.2_vae_renamed.safetensors"
    shutil.copy(src, dst)
    f = identify_file([dst])
    assert (f.kind, f.dtype, f.arch.dim, f.arch.num_layers, f.ident.text_dim) == ("dit", "fp8_scaled", 32, 2, 32)


def test_official_dit_map_round_trips_through_diffusers_converter():
    ref = tiny.reference_components(tiny.T21).transformer.state_dict()
    back = convert.dit_official_to_diffusers(convert.dit_diffusers_to_official(ref))
    assert set(back) == set(ref) and all(torch.equal(back[k], ref[k]) for k in ref)


def test_loading_shares_memory_with_the_file_instead_of_copying(tmp_path):
    """Every parameter of an f32 checkpoint loaded as f32 must live inside the file's mmap."""
    from diffusers import WanTransformer3DModel
    torch.manual_seed(0)
    model = WanTransformer3DModel(num_attention_heads=8, attention_head_dim=32, in_channels=16, out_channels=16,
                                  text_dim=256, freq_dim=64, ffn_dim=1024, num_layers=4)
    path = tmp_path / "dit.safetensors"
    save_file(convert.dit_diffusers_to_official(model.state_dict()), str(path))
    assert path.stat().st_size > 10e6
    t = build_transformer(identify_file([path]), catalog.MODELS[tiny.T21], torch.float32)
    maps = mapped_ranges(path)
    assert maps, "the checkpoint is not memory-mapped"
    params = list(t.parameters())
    inside = [p for p in params if any(lo <= p.data_ptr() < hi for lo, hi in maps)]
    assert len(inside) == len(params)
    assert all(torch.equal(p, q) for p, q in zip(t.state_dict().values(), model.state_dict().values()))


def test_download_offline_lists_each_file_and_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = catalog.get("wan2.1-t2v-1.3b")
    with pytest.raises(UserError) as e:
        download_missing(spec, tmp_path)
    msg = str(e.value)
    for d in spec.downloads:
        assert d.filename.rsplit("/", 1)[-1] in msg and str(tmp_path / d.subdir) in msg


def test_download_skips_files_already_there(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = catalog.get("wan2.1-t2v-1.3b")
    for d in spec.downloads:
        (tmp_path / d.subdir).mkdir(exist_ok=True)
        (tmp_path / d.subdir / d.filename.rsplit("/", 1)[-1]).write_bytes(b"x")
    assert download_missing(spec, tmp_path) == []


def test_load_components_in_half_precision_keeps_file_dtype(tiny_root):
    files = scan([tiny_root["comfyui-fp16"].path]).resolve(tiny.T21)
    comp = load_components(files, torch.float16)
    assert {p.dtype for p in comp.transformer.parameters()} == {torch.float16}
    assert comp.text_encoder.shared.weight is comp.text_encoder.encoder.embed_tokens.weight


def test_tiny_demo_parts_never_stand_in_for_a_real_models_parts(tiny_root):
    """A user with the demo models but no real files: every real model lists all its files as missing
    and claims none of the tiny text encoders, VAEs or tokenizers (they would make garbage)."""
    inv = scan([info.path for info in tiny_root.values()])
    for mid in ("wan2.1-t2v-1.3b", "wan2.2-ti2v-5b"):
        st = status_of(inv, mid)
        assert not st.runnable and st.found == {}
        text = " ".join(st.missing)
        assert "diffusion model" in text and "umT5-xxl text encoder" in text and "VAE" in text
        assert "Unusable" not in text
    assert {tiny.T21, tiny.A14, tiny.TI2V} <= set(inv.runnable_ids())


# ---- found but unsupported, folder problems, the inventory cache ---------------------------------------

def test_an_i2v_dit_of_a_size_no_model_has_is_reported_found_and_unsupported_with_its_shape(tmp_path):
    # Wan2.1-Fun-1.3B-InP: the 1.3B's size with I2V's 36 input channels and a CLIP image embedder
    from .sparse_checkpoints import wan_dit_tensors, write_header_only
    dit = write_header_only(tmp_path / "diffusion_models" / "wan2.1_fun_1.3B_InP.safetensors",
                            wan_dit_tensors(1536, 8960, 30, in_ch=36, img_emb=True))
    inv = scan([tmp_path])
    [f] = inv.unsupported()
    assert f.path == dit and f.kind == "dit"
    assert f.problem.startswith("Wan DiT dim 1536, 30 layers, in_channels 36 — ")
    assert "image-to-video" in f.problem and f.problem.endswith("not supported yet")
    assert f.problem in inv.problems()
    # the model of that size says the file is there and what it is, before what it still needs
    st = status_of(inv, "wan2.1-t2v-1.3b")
    assert st.missing[0] == f"Found {dit}, but it is a {f.problem}."
    # other sizes do not mention it
    assert not any(m.startswith("Found") for m in status_of(inv, "wan2.1-t2v-14b").missing)


def test_a_dit_of_an_unknown_shape_is_not_silently_ignored(tmp_path):
    from .sparse_checkpoints import wan_dit_tensors, write_header_only
    write_header_only(tmp_path / "odd_dit.safetensors", wan_dit_tensors(2048, 8192, 24, in_ch=16))
    [f] = scan([tmp_path]).unsupported()
    assert "Wan DiT dim 2048, 24 layers, in_channels 16" in f.problem and "not supported yet" in f.problem


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "none", "does not exist"),
    (lambda p: (p / "notes.txt", (p / "notes.txt").write_text("x"))[0], "is a file, not a folder"),
])
def test_a_models_folder_that_is_not_one_is_named_as_the_problem(tmp_path, make, words):
    bad = make(tmp_path)
    inv = scan([bad])
    assert len(inv.folder_problems) == 1 and str(bad) in inv.folder_problems[0] and words in inv.folder_problems[0]
    assert inv.folder_problems[0] in inv.problems()


def test_an_unlistable_subfolder_is_named_and_the_rest_still_scans(tiny_root, tmp_path, monkeypatch):
    root = copy_layout(tiny_root, "comfyui-fp16", tmp_path / "models")
    (root / "loras").mkdir()
    real_scandir = os.scandir

    def scandir(p):     # (the tests may run as root, which ignores permission bits)
        if Path(p).name == "loras":
            raise PermissionError(13, "Permission denied", str(p))
        return real_scandir(p)
    monkeypatch.setattr("wan_app.checkpoints.survey.os.scandir", scandir)
    inv = scan([root])
    assert inv.folder_problems == [f"folder {root / 'loras'} cannot be listed: permission denied"]
    assert tiny.T21 in inv.runnable_ids()


def test_a_symlinked_folder_is_followed_and_a_folder_loop_ends(tiny_root, tmp_path):
    real = copy_layout(tiny_root, "comfyui-fp16", tmp_path / "elsewhere")
    root = tmp_path / "models"
    root.mkdir()
    (root / "wan").symlink_to(real)              # ComfyUI users link big folders from other drives
    (real / "vae" / "back").symlink_to(root)     # and a loop back up
    inv = scan([root])
    assert tiny.T21 in inv.runnable_ids()
    assert len([f for f in inv.files if f.kind == "dit"]) == 1


def count_header_reads(monkeypatch) -> list:
    from wan_app.checkpoints import discover
    reads = []
    real = discover.read_header

    def counting(p):
        reads.append(Path(p).name)
        return real(p)
    monkeypatch.setattr(discover, "read_header", counting)
    return reads


def test_the_cached_inventory_reads_no_header_again_while_nothing_changed(tiny_root, tmp_path, monkeypatch):
    from wan_app.checkpoints import InventoryCache
    root = copy_layout(tiny_root, "comfyui-fp16", tmp_path / "models")
    reads = count_header_reads(monkeypatch)
    cache = InventoryCache()
    first = cache.get([root])
    n = len(reads)
    assert n == 3                                   # DiT, umT5, VAE
    assert cache.get([root]) is first and len(reads) == n


def test_the_cached_inventory_notices_a_new_file_and_reads_only_that_one(tiny_root, tmp_path, monkeypatch):
    from wan_app.checkpoints import InventoryCache
    root = copy_layout(tiny_root, "comfyui-fp16", tmp_path / "models")
    cache = InventoryCache()
    assert tiny.TI2V not in cache.get([root]).runnable_ids()
    reads = count_header_reads(monkeypatch)
    added = []
    for sub in ("diffusion_models", "vae"):
        for f in (tiny_root["comfyui-ti2v"].path / sub).iterdir():
            shutil.copy(f, root / sub / f.name)
            added.append(f.name)
    inv = cache.get([root])
    assert tiny.TI2V in inv.runnable_ids()
    assert sorted(reads) == sorted(added) and len(added) == 2


def test_the_cached_inventory_notices_a_file_replaced_in_place(tiny_root, tmp_path):
    from wan_app.checkpoints import InventoryCache
    root = copy_layout(tiny_root, "comfyui-fp16", tmp_path / "models")
    cache = InventoryCache()
    assert tiny.T21 in cache.get([root]).runnable_ids()
    dit = next((root / "diffusion_models").iterdir())
    data = dit.read_bytes()
    with open(dit, "r+b") as f:                     # same name, same folder mtime: only the file changed
        f.truncate(len(data) - 1000)
    inv = cache.get([root])
    assert tiny.T21 not in inv.runnable_ids() and any("truncated" in p for p in inv.problems())


def test_scan_cached_refresh_reads_every_header_again(tiny_root, tmp_path, monkeypatch):
    from wan_app.checkpoints import scan_cached
    root = copy_layout(tiny_root, "comfyui-fp16", tmp_path / "models")
    scan_cached([root])
    reads = count_header_reads(monkeypatch)
    scan_cached([root])
    assert reads == []
    scan_cached([root], refresh=True)
    assert len(reads) == 3


@pytest.mark.parametrize("keep_class", [True, False])
def test_a_tokenizer_folder_that_asks_to_run_its_own_code_is_refused_and_nothing_runs(tiny_root, tmp_path,
                                                                                     keep_class):
    """transformers asks "run the custom code? [y/N]" for a tokenizer_config.json with an auto_map (and no
    tokenizer class of its own): a yes on stdin would run the folder's Python. The app refuses the folder."""
    import json
    import subprocess
    import sys
    root = copy_layout(tiny_root, "diffusers-t2v", tmp_path / "models")
    marker = tmp_path / "ran"
    cfg_path = root / "tokenizer" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    if not keep_class:
        cfg.pop("tokenizer_class", None)
    cfg_path.write_text(json.dumps(cfg))
    (root / "tokenizer" / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import T5Tokenizer\n"
        "class EvilTokenizer(T5Tokenizer):\n    pass\n")
    code = ("import sys\nfrom wan_app.checkpoints import scan\nfrom wan_app.checkpoints.load import load_tokenizer\n"
            "from wan_app.errors import UserError\n"
            f"files = scan([{str(root)!r}]).resolve({tiny.T21!r})\n"
            "try:\n    load_tokenizer(files.tokenizer)\nexcept UserError as e:\n    print('REFUSED', e)\n")
    r = subprocess.run([sys.executable, "-c", code], input="y\n" * 5, capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "REFUSED tokenizer:" in r.stdout and "auto_map" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert not marker.exists()
