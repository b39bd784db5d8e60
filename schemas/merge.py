"""Settings of the two merge commands: `python -m longqa.merge` (shard builds → one dataset) and `python -m sft.merge`
(an adapter → a plain model). Their flags are generated from these models (`schemas.cli`).

Never imports torch or transformers.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from schemas.outdir import OVERWRITE


class ShardMergeConfig(BaseModel):
    """`python -m longqa.merge PART... --out DIR`."""

    model_config = ConfigDict(extra="forbid")

    parts: list[str] = Field(min_length=1, description="output folders of `python -m longqa.build --shard-index i "
                             "--num-shards n`, one per shard")
    out: str = Field(description="the merged dataset's folder (written atomically)")
    overwrite: bool = Field(False, description=OVERWRITE)


class AdapterMergeConfig(BaseModel):
    """`python -m sft.merge ADAPTER_DIR --out DIR`."""

    model_config = ConfigDict(extra="forbid")

    adapter_dir: str = Field(description="adapter folder written by training (OUTPUT_DIR/adapter of python -m sft.run)")
    out: str = Field(description="folder for the merged model (written atomically; must not be the adapter folder)")
    overwrite: bool = Field(False, description=OVERWRITE)
    base: str | None = Field(None, description="base model reference; null: the one named in adapter_config.json")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype of the merged weights (the "
                                                             "merge itself runs in float32)")
