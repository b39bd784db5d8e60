"""python benchmarks/gpu/stages_smoke.py --out DIR [--corpus data/long-text] [--experiment CONFIG]
(``on_device.sh stages|experiment --cpu-smoke``)

Small copies of the configs ``bash benchmarks/gpu/on_device.sh stages`` (or ``experiment``) runs, so the same
commands (``python -m longqa.build``, then ``python -m sft.experiment``, in the product's environment) can be tried on
any machine in a few minutes: ``configs/build/longqa_distract_16k.yaml`` at 1,024 tokens, and the experiment
(default ``configs/experiments/longlora_smollm2_16k_stages_gpu.yaml``; ``on_device.sh experiment`` passes
``configs/experiments/longlora_smollm2_16k.yaml``) with the same arms (``from: extend`` included), tasks and
comparisons at 1,024 tokens, 2 steps an arm, 2 QA questions, one passkey prompt, one perplexity window and one RULER
sample a task (at 2,048 tokens: qa_1 fits no fewer), float32. Only sizes change; every other field is the GPU
config's.

Writes ``DIR/build.yaml`` and ``DIR/experiment.yaml`` and prints the shell assignments ``on_device.sh`` evaluates
(``build=...``, ``experiment=...``, ``data=...``). Needs pyyaml only.
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "configs/build/longqa_distract_16k.yaml"
EXPERIMENT = ROOT / "configs/experiments/longlora_smollm2_16k_stages_gpu.yaml"
LENGTH = 1024


def small_build(config: dict, out: Path) -> dict:
    config = dict(config, max_length=LENGTH, out=str(out))
    # whole articles (median 6.4k tokens) do not fit 1k: their paragraphs, among other paragraphs
    config["inputs"] = [dict(i, context="paragraph", distractors={**i["distractors"], "length": LENGTH})
                        for i in config["inputs"]]
    return config


def small_experiment(config: dict, out: Path, data: Path, corpus: Path) -> dict:
    config = dict(config, out=str(out / "experiment"), target_length=LENGTH)
    config["train_overrides"] = {**config["train_overrides"], "max_length": LENGTH, "max_steps": 2, "save_steps": 2,
                                 "warmup_steps": 0, "max_train_seconds": None, "model_dtype": "float32",
                                 "bf16": False, "data": str(corpus / "train")}
    arms = []
    for arm in config["arms"]:
        arm = dict(arm)
        if arm.get("overrides", {}).get("data"):  # the SFT arms: the small QA build
            arm["overrides"] = {**arm["overrides"], "data": str(data)}
        arms.append(arm)
    config["arms"] = arms
    ev = config["eval"]
    small = {"qa": {"data": str(data), "limit": 2, "length_buckets": [256, 512, 768]},
             "passkey": {"lengths": [LENGTH - 8], "depths": [0.5], "trials": 1},
             "ppl": {"data": str(corpus / "heldout"), "lengths": [512], "max_windows": 1, "stride": 512},
             "ruler": {"lengths": [2 * LENGTH], "samples": 1}}  # qa_1 needs 2k
    config["eval"] = {**ev, "dtype": "float32",
                      **{task: {**ev.get(task, {}), **sizes} for task, sizes in small.items() if task in ev["tasks"]}}
    return config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder of the small configs, the data and the experiment")
    p.add_argument("--corpus", default=str(ROOT / "data/long-text"), help="the long-text corpus (train/, heldout/)")
    p.add_argument("--experiment", default=str(EXPERIMENT), help="the experiment config to copy small")
    args = p.parse_args(argv)
    out, corpus = Path(args.out).resolve(), Path(args.corpus).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "longqa-distract-1k"
    build, experiment = out / "build.yaml", out / "experiment.yaml"
    build.write_text(yaml.safe_dump(small_build(yaml.safe_load(BUILD.read_text()), data), sort_keys=False))
    recipe = yaml.safe_load(Path(args.experiment).read_text())
    experiment.write_text(yaml.safe_dump(small_experiment(recipe, out, data, corpus), sort_keys=False))
    print(f"build={shlex.quote(str(build))}; experiment={shlex.quote(str(experiment))}; data={shlex.quote(str(data))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
