"""Helpers for tunescope's tests: tiny-model factories and slow float64 reference implementations.

Import the submodules directly (``tunescope.testing.tiny``, ...); nothing here is part of the
analysis API.
"""
