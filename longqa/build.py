"""python -m longqa.build [--config recipe.yaml] [--input PATH --format FORMAT ...] [--out DIR]

Build a LongQA dataset: read → shard → validate → split → dedup → render → tokenize → write → describe.
With no --config and no --input, builds the embedded default recipe (SQuAD v2 dev articles, SmolLM2 chat template).
Every field of BuildConfig is a flag (`--help` lists them) and overrides the recipe; `--input PATH` (repeatable)
replaces the recipe's inputs, `--format`, `--field NAME=COLUMN` and `--qa-file` describe them. Every problem of the
configuration and its paths is reported at once before the tokenizer loads (exit code 2); --print-config shows the
resolved configuration.
"""
from __future__ import annotations

import logging
import sys
from importlib import resources
from typing import Any

import yaml

from schemas.build import BuildConfig
from schemas.cli import Command, Options
from schemas.paths import build_problems

log = logging.getLogger(__name__)

#: the builder's short spellings (the README's), each the same flag as the generated one
ALIASES = {"--input": "inputs.path", "--format": "inputs.format", "--field": "inputs.fields",
           "--qa-file": "inputs.qa_file", "--heldout-doc": "heldout_docs"}


def default_recipe() -> dict[str, Any]:
    """The embedded default build recipe (``longqa/recipes/default.yaml``): SQuAD v2 dev with SmolLM2's template."""
    return yaml.safe_load(resources.files("longqa").joinpath("recipes/default.yaml").read_text(encoding="utf-8"))


def base_recipe(overrides: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Without --config: the embedded default, or nothing when the inputs come from flags. ``--license`` then also
    licenses those inputs (unless ``--inputs.license`` is given)."""
    if "inputs.path" not in overrides:
        return default_recipe(), "default recipe"
    if "license" in overrides:
        overrides.setdefault("inputs.license", overrides["license"])
    return {}, "command line"


COMMAND = Command("python -m longqa.build", __doc__, BuildConfig, paths=build_problems, aliases=ALIASES,
                  base=base_recipe)


def summary_table(manifest: dict) -> str:
    counts, tokens, trunc = manifest["counts"], manifest["tokens"], manifest["truncation"]
    rows = [("split", "samples", "tokens", "median", "p90", "max", "truncated", "doc tok dropped")]
    for split, t in tokens.items():
        rows.append((split, t["samples"], t["tokens"], t.get("median", "-"), t.get("p90", "-"), t.get("max", "-"),
                     trunc[split]["samples_truncated"], trunc[split]["doc_tokens_dropped"]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in rows]
    reasons = ", ".join(f"{k} {v}" for k, v in counts["by_reason"].items()) or "none"
    lines.append(f"read {counts['read']} = written {counts['written']} + rejected {counts['rejected']} "
                 f"({reasons})")
    stages = [f"{name} {c['kept']}" + (f" (-{sum(c['dropped'].values())})" if c["dropped"] else "")
              for name, c in counts.get("by_stage", {}).items()]
    if stages:
        lines.append("kept by stage (dropped): " + " -> ".join(stages))
    return "\n".join(lines)


def build(cfg: BuildConfig, options: Options) -> None:
    from longqa.pipeline import build as build_dataset

    manifest = build_dataset(cfg, progress=options.progress)
    log.info(summary_table(manifest))
    counts = manifest["counts"]
    if not counts["written"]:
        log.warning("no sample was written: all %d records read were rejected; %s/rejects.jsonl says why, line by "
                    "line", counts["read"], cfg.out)
    log.info("wrote %s/ (text/, tokenized/, manifest.json, rejects.jsonl, lengths.png, README.md)", cfg.out)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv, build)


if __name__ == "__main__":
    sys.exit(main())
