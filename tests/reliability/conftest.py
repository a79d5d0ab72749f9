"""Fixtures of the reliability tests."""

from .common import forks  # noqa: F401 (a fixture: processes forked from a server that imported the CLI)
