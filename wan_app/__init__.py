"""Wan video studio engine. Never imports gradio: the UI and the CLI consume its event stream."""
__version__ = "0.1.0"
