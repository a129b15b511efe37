import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """Every tiny layout written once: {layout name: LayoutInfo(model_id, path, dtype)}."""
    from wan_app import tiny
    return tiny.build_all(tmp_path_factory.mktemp("tiny_models"))
