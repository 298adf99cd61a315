"""The ``autolabel`` command: a thin shell over the Python API, one module per group of commands."""

from autolabel.cli import data, demo, review, run, tasks  # noqa: F401  (each registers its commands on ``app``)
from autolabel.cli.app import app, main

__all__ = ["app", "main"]
