"""Locally built database images for the verification tests (see build.py)."""

from __future__ import annotations
