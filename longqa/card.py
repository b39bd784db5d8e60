"""Render the dataset card (README.md with Hub YAML metadata) from the template in `data_cards/`."""
from __future__ import annotations

from importlib import resources

import jinja2
import yaml

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]


def size_category(rows: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if rows < limit), "n>100M")


def arrow_layout(splits: list[str]) -> dict[str, dict[str, str]]:
    """data_files of a built folder: the `save_to_disk` Arrow shards of each dataset."""
    return {name: {s: f"{name}/{s}/*.arrow" for s in splits} for name in ("text", "tokenized")}


def hub_metadata(manifest: dict, data_files: dict[str, dict[str, str]] | None = None,
                 extra: dict | None = None) -> dict:
    """The YAML header the Hub reads: license, task categories, size category and one config per dataset.

    `data_files` maps config name -> split -> file pattern (the first config is the default one).
    """
    splits = list(manifest["tokens"])
    data_files = data_files or arrow_layout(splits)
    licenses = {s.get("license") for s in manifest["config"]["inputs"]} - {None}
    license = manifest["config"].get("license") or (licenses.pop() if len(licenses) == 1 else "other")
    configs = [{"config_name": name, **({"default": True} if i == 0 else {}),
                "data_files": [{"split": s, "path": pattern} for s, pattern in files.items()]}
               for i, (name, files) in enumerate(data_files.items())]
    return {"license": license, "task_categories": ["question-answering", "text-generation"],
            "size_categories": [size_category(manifest["counts"]["written"])],
            "tags": ["long-context", "longqa", "longlora"], "pretty_name": manifest["name"], "configs": configs,
            **(extra or {})}


def render_card(manifest: dict, *, repo_id: str | None = None, data_files: dict[str, dict[str, str]] | None = None,
                extra: dict | None = None) -> str:
    """The dataset card: Hub YAML header + statistics. With `repo_id`, usage is shown for the Hub repo."""
    template = resources.files("data_cards").joinpath("dataset_card.md.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True)
    meta = hub_metadata(manifest, data_files, extra)
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return env.from_string(template).render(header=header, m=manifest, repo_id=repo_id,
                                            configs=[c["config_name"] for c in meta["configs"]])
