"""A run killed with SIGKILL between checkpoints resumes from its last complete checkpoint with `--resume`."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.sft.conftest import ROOT, launch_env, make_tiny_llama, write_tokenized

HANG_GUARD_S = 1800  # only a hang guard: the test waits on events (checkpoints written), never on the clock
MAX_STEPS = 6


def complete_checkpoints(out: Path) -> list[int]:
    """Steps of the checkpoints whose trainer_state.json (written last) exists."""
    return sorted(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))


def test_sigkill_then_resume_continues_from_the_last_checkpoint(tmp_path):
    from sft.merge import load_adapter

    # wide enough (hidden 256, 4 layers) and long enough (~450 tokens) that a step plus its checkpoint takes a good
    # fraction of a second on a CPU, so the run is reliably still going when checkpoint-2 appears
    model = make_tiny_llama(tmp_path / "model", hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                            num_attention_heads=8, num_key_value_heads=4)
    data = write_tokenized(tmp_path / "built", [440 + 4 * i for i in range(12)])
    out = tmp_path / "run"
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        model=model, data=data, output_dir=str(out), max_length=512, max_steps=MAX_STEPS, save_steps=1,
        save_total_limit=None, learning_rate=1e-3, warmup_steps=0, bf16=False, seed=0)))
    cmd = [sys.executable, "-m", "sft.run", "--config", str(recipe)]

    first = subprocess.Popen(cmd, cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    # Wait on the event (checkpoint-2 complete), not on the clock: a slow or busy machine only makes it take longer.
    # The outer limit is a hang guard far above any machine's speed.
    deadline = time.monotonic() + HANG_GUARD_S
    while not any(step >= 2 for step in complete_checkpoints(out)):
        assert first.poll() is None, f"the run ended before checkpoint-2:\n{first.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no checkpoint-2 after {HANG_GUARD_S} s: the run hangs"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=HANG_GUARD_S)
    assert first.returncode == -signal.SIGKILL
    assert not (out / "adapter").exists()
    last = complete_checkpoints(out)[-1]
    assert 2 <= last < MAX_STEPS, "the run finished before it could be killed"

    second = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=launch_env(), capture_output=True, text=True,
                            timeout=HANG_GUARD_S)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert f"resuming from {out / f'checkpoint-{last}'}" in second.stdout

    # metrics.jsonl: the killed run's steps up to the checkpoint, then the resumed run's; every step exactly once
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == list(range(1, MAX_STEPS + 1))
    state = json.loads((out / f"checkpoint-{MAX_STEPS}/trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, MAX_STEPS + 1))
    # the resumed process trained only the steps after the checkpoint (it did not start again from step 0): the
    # Trainer prints one log dict per step it runs
    assert second.stdout.count("'loss':") == MAX_STEPS - last, second.stdout[-3000:]

    load_adapter(out / "adapter")  # peft loads it; every saved tensor checked in place
