"""Pydantic models shared by the dataset builder (`longqa`) and the trainer (`sft`).

Never imports torch or transformers.
"""
from schemas.build import BuildConfig, InputSpec
from schemas.records import Document, Origin, Record, Reject

__all__ = ["BuildConfig", "InputSpec", "Document", "Origin", "Record", "Reject"]
