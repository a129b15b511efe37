"""Persisted settings: round trip, and a broken file never stops the app."""
from __future__ import annotations

import json

import pytest

from wan_app.errors import UserError
from wan_app.settings import Settings, load_settings, save_settings, validate

REQUEST = {"model": "wan2.1-t2v-1.3b", "prompt": "a fox", "width": 832, "height": 480, "frames": 81,
           "steps": 30, "guidance": 5.0, "solver": "unipc", "seed": 7}


def full_settings() -> Settings:
    return Settings(models_dirs=["models", "/mnt/big/wan"], outputs_dir="/tmp/outs",
                    default_model="wan2.2-ti2v-5b",
                    overrides={"blocks_swapped": 10, "weight_dtype": "fp8", "attention": "sdpa",
                               "vae_tiling": True, "text_encoder": "cpu", "experts_resident": "one"},
                    last_request=dict(REQUEST))


def backups(folder):
    return sorted(p.name for p in folder.glob("*.broken-*.json"))


def test_a_missing_file_gives_defaults_without_a_notice(tmp_path):
    s, notice = load_settings(tmp_path / "settings.json")
    assert s == Settings() and notice is None
    assert s.models_dirs == ["models"] and s.outputs_dir == "outputs"


def test_settings_round_trip(tmp_path):
    path = tmp_path / "sub" / "settings.json"
    save_settings(full_settings(), path)
    s, notice = load_settings(path)
    assert s == full_settings() and notice is None
    assert list(path.parent.iterdir()) == [path]      # no temp file left behind


def test_broken_json_gives_defaults_is_kept_as_a_copy_and_replaced_only_on_save(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"outputs_dir": "x",', encoding="utf-8")
    s, notice = load_settings(path)
    assert s == Settings()
    [backup] = backups(tmp_path)
    assert (tmp_path / backup).read_text() == '{"outputs_dir": "x",'
    assert "not valid JSON" in notice and "defaults are used" in notice and backup in notice
    # loading changes nothing: the damaged file is still there, untouched, until settings are saved
    assert path.read_text() == '{"outputs_dir": "x",'
    save_settings(s, path)
    assert backups(tmp_path) == [backup]          # that state of the file is kept once
    # the saved file is in place: the next start is quiet
    assert load_settings(path) == (Settings(), None)


def test_a_json_list_is_not_settings_and_is_left_alone(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("[1, 2]")
    with pytest.raises(UserError) as e:
        load_settings(path)
    assert e.value.field == "settings" and "list" in e.value.problem
    with pytest.raises(UserError):
        save_settings(Settings(), path)
    assert path.read_text() == "[1, 2]" and backups(tmp_path) == []


@pytest.mark.parametrize("key,value,named", [
    ("default_model", "wan9-imaginary", "default_model"),
    ("models_dirs", "models", "models_dirs"),                  # a string, not a list
    ("outputs_dir", 5, "outputs_dir"),
    ("overrides", {"weight_dtype": "fp4"}, "overrides.weight_dtype"),
    ("overrides", {"attention": "xformers"}, "overrides.attention"),
    ("overrides", {"blocks_swapped": "ten"}, "overrides.blocks_swapped"),
    ("overrides", {"vae_tiling": "yes"}, "overrides.vae_tiling"),
    ("overrides", {"experts_resident": "all"}, "overrides.experts_resident"),
    ("overrides", [], "overrides"),
    ("last_request", {**REQUEST, "model": "nope"}, "last_request.model"),
    ("last_request", {**REQUEST, "steps": "many"}, "last_request.steps"),
])
def test_an_invalid_value_is_rejected_with_a_notice_naming_the_field(tmp_path, key, value, named):
    path = tmp_path / "settings.json"
    good = full_settings().to_dict()
    path.write_text(json.dumps({**good, key: value}))
    written = path.read_text()
    s, notice = load_settings(path)
    assert named in notice
    got = getattr(s, key)
    assert (got, type(got)) != (value, type(value))          # (True == 1 in Python, hence the types)
    if not key.startswith(("overrides", "last_request")):
        assert getattr(s, key) == getattr(Settings(), key)   # that field falls back to its default
        assert s.overrides == good["overrides"]               # the valid fields are kept
    assert path.read_text() == written           # loading leaves the file as it is ...
    [backup] = backups(tmp_path)                 # ... and keeps a copy, since a save cannot keep the value
    assert backup in notice
    assert json.loads((tmp_path / backup).read_text())[key] == value
    save_settings(s, path)
    assert backups(tmp_path) == [backup]


def test_one_bad_override_keeps_the_other_overrides(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"overrides": {"weight_dtype": "fp4", "blocks_swapped": 4}}))
    s, notice = load_settings(path)
    assert s.overrides == {"blocks_swapped": 4}
    assert "overrides.weight_dtype" in notice


def test_unknown_keys_are_dropped_with_a_notice_and_valid_keys_kept(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"outputs_dir": "vids", "theme": "dark",
                                "overrides": {"weight_dtype": "bf16", "turbo": True}}))
    s, notice = load_settings(path)
    assert s.outputs_dir == "vids" and s.overrides == {"weight_dtype": "bf16"}
    assert "theme" in notice and "overrides.turbo" in notice
    assert backups(tmp_path) == []                # nothing was wrong, so nothing is set aside


def test_null_overrides_mean_automatic(tmp_path):
    s, problems = validate({"overrides": {"weight_dtype": None, "vae_tiling": False}})
    assert problems == [] and s.overrides == {"vae_tiling": False}
    assert s.overrides_obj().vae_tiling is False and s.overrides_obj().weight_dtype is None


def test_validate_reports_problems_by_field():
    s, problems = validate({"default_model": "x", "outputs_dir": "clips"})
    assert [p.field for p in problems] == ["default_model"]
    assert s.outputs_dir == "clips" and s.default_model is None


def test_saving_invalid_settings_is_a_user_error_and_writes_nothing(tmp_path):
    path = tmp_path / "settings.json"
    bad = full_settings()
    bad.overrides = {"weight_dtype": "fp4"}
    with pytest.raises(UserError) as e:
        save_settings(bad, path)
    assert e.value.field == "overrides.weight_dtype"
    assert not path.exists()


def test_an_edit_made_while_the_app_runs_survives_an_unrelated_save(tmp_path):
    path = tmp_path / "settings.json"
    save_settings(full_settings(), path)
    s, _ = load_settings(path)                         # the app starts
    on_disk = json.loads(path.read_text())
    on_disk["outputs_dir"] = "/mnt/edited/by/hand"     # the user edits the file meanwhile
    path.write_text(json.dumps(on_disk))
    s.last_request = {**REQUEST, "prompt": "a dog"}    # a Generate remembers its request
    save_settings(s, path)
    again, notice = load_settings(path)
    assert notice is None
    assert again.outputs_dir == "/mnt/edited/by/hand" and again.last_request["prompt"] == "a dog"
    assert again.models_dirs == full_settings().models_dirs


def test_save_with_only_writes_just_those_fields(tmp_path):
    path = tmp_path / "settings.json"
    save_settings(full_settings(), path)
    s, _ = load_settings(path)
    s.models_dirs = ["/from/the/command/line"]          # a run-time override that must not persist
    s.last_request = {**REQUEST, "seed": 99}
    save_settings(s, path, only=("last_request",))
    again, _ = load_settings(path)
    assert again.models_dirs == full_settings().models_dirs and again.last_request["seed"] == 99


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "settings.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"outputs_dir": "vids"}).encode())
    s, notice = load_settings(path)
    assert notice is None and s.outputs_dir == "vids"


def test_keys_of_a_newer_version_are_kept_when_saving(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"outputs_dir": "vids", "theme": "dark"}))
    s, notice = load_settings(path)
    assert "theme" in notice
    s.outputs_dir = "clips"
    save_settings(s, path)
    assert json.loads(path.read_text())["theme"] == "dark" and backups(tmp_path) == []
