"""The errors whose message names the problem and the fix, in a module that imports nothing heavy, so that every
entry point can recognise them (and print one clear line) without importing torch or transformers."""
from __future__ import annotations


class BackboneError(RuntimeError):
    """A backbone cannot be loaded; the message says why and how to fix it."""


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""
