"""The smart-home morning routine as ZeroMQ pub/sub across containers."""

__version__ = "0.1.0"  # the one place it is set: pyproject.toml reads it, `smarthome --version` prints it
