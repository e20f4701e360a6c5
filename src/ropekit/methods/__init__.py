"""Importing this package registers every method in :data:`ropekit.registry.METHODS`."""

from . import attention_side, frequency  # noqa: F401
