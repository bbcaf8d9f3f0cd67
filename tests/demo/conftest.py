"""Fixtures of the demo-model tests: the prepared reference model (shared with tests/models)."""

from __future__ import annotations

from tests.models.conftest import prepared_model_dir

__all__ = ["prepared_model_dir"]
