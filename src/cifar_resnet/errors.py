"""Errors a user can fix: the CLI prints their message on one line and exits 2."""

from __future__ import annotations


class CifarResnetError(Exception):
    """Bad input from the user; the message says what is wrong and what to do."""


class ConfigError(CifarResnetError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class DataError(CifarResnetError):
    """The data set cannot be found, downloaded, verified or decoded."""


class CheckpointError(CifarResnetError):
    """A checkpoint or run folder cannot be used as asked."""
