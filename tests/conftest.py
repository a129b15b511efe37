import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402

# ./test.sh runs the suite on two pytest-xdist workers. The tests that start the web app (each on a probed
# free port) and drive it with timed steps run one after another on one worker, as one xdist group; so does
# a test marked @pytest.mark.serial, which times a run. The rest spreads over both workers. (Two such
# groups side by side were slower here: two apps and a browser on two cores.)
SERIAL_MODULES = {"test_browser", "test_browser_i2v", "test_ui_app", "test_ui_security", "test_ui_i2v",
                  "test_ui_tabs"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SERIAL_MODULES or item.get_closest_marker("serial"):
            item.add_marker(pytest.mark.xdist_group("serial"))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """Every tiny layout written once: {layout name: LayoutInfo(model_id, path, dtype)}."""
    from wan_app import tiny, tiny_gguf
    root = tmp_path_factory.mktemp("tiny_models")
    layouts = tiny.build_all(root, i2v=True)
    layouts.update({name: tiny.LayoutInfo(model_id, path, "gguf")
                    for name, (model_id, path, _qtype) in tiny_gguf.write_layouts(root).items()})
    return layouts


@pytest.fixture(scope="session")
def test_images(tmp_path_factory):
    """A first and a last frame (64x64 PNG) for the image-to-video layouts."""
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = {}
    for name in ("first", "last"):
        out[name] = root / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out[name])
    return out


def image_args(model_id: str, images) -> list[str]:
    """The CLI flags a model needs for its images (none for text-to-video)."""
    from wan_app import catalog
    spec = catalog.get(model_id)
    args = ["--image", str(images["first"])] if spec.image_required else []
    return args + (["--last-image", str(images["last"])] if spec.image_input == "image+last" else [])
