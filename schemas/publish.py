"""Settings of the two publish commands: `python -m longqa.publish` (a built dataset) and `python -m sft.publish` (an
adapter or a merged model). Their flags are generated from these models (`schemas.cli`).

Never imports torch or transformers.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from schemas.outdir import OVERWRITE


class HubOptions(BaseModel):
    """Where and how a staged folder is uploaded (shared by both publish commands)."""

    model_config = ConfigDict(extra="forbid")

    repo_id: str = Field(description="ORG/NAME of the Hub repo")
    private: bool = Field(False, description="create the repo private")
    revision: str | None = Field(None, description="branch to commit to (created if missing); null: main")
    dry_run: str | None = Field(None, description="stage and verify into this folder; upload nothing")
    overwrite: bool = Field(False, description=OVERWRITE)
    endpoint: str | None = Field(None, description="Hub URL; null: HF_ENDPOINT or https://huggingface.co")


class DatasetPublishConfig(HubOptions):
    """`python -m longqa.publish DATASET_DIR --repo-id ORG/NAME`."""

    dataset_dir: str = Field(description="output folder of python -m longqa.build")


class ModelPublishConfig(HubOptions):
    """`python -m sft.publish RUN_OR_MODEL_DIR --repo-id ORG/NAME`."""

    source: str = Field(description="run folder (python -m sft.run output_dir), adapter folder or model folder")
    kind: Literal["adapter", "merged"] | None = Field(
        None, description="what to publish: the adapter, or the merged model (merged now if the run has none); "
        "null: the merged model when there is one, else the adapter")
    base_model_id: str | None = Field(None, description="Hub id of the base model, written into the card and the "
                                      "adapter config")
    base: str | None = Field(None, description="where to load the base from when verifying an adapter; null: the "
                             "base it was trained on, on this machine")
