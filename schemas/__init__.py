"""Pydantic models shared by the dataset builder (`longqa`) and the trainer (`sft`).

Never imports torch or transformers. The models are imported on first use (module ``__getattr__``), so that
``schemas.errors`` and ``schemas.paths`` load where pydantic is absent (the GPU scripts of ``benchmarks/gpu/``).
"""
from __future__ import annotations

import importlib

_MODELS = {"BuildConfig": "schemas.build", "InputSpec": "schemas.build", "Document": "schemas.records",
           "Origin": "schemas.records", "Record": "schemas.records", "Reject": "schemas.records"}

__all__ = list(_MODELS)


def __getattr__(name: str):
    if name in _MODELS:
        return getattr(importlib.import_module(_MODELS[name]), name)
    raise AttributeError(f"module 'schemas' has no attribute {name!r}")
