"""The generated command lines (schemas.cli), configuration resolution (schemas.resolve) and the one error path."""
from __future__ import annotations

import importlib
import logging
import typing

import pytest
import yaml
from pydantic import BaseModel

from schemas.cli import Command, setup_logging
from schemas.errors import ConfigError, DataError, UserError
from schemas.resolve import resolve
from schemas.train import TrainConfig

#: every command line of the project (module, positional arguments a parse needs)
COMMANDS = ("longqa.build", "longqa.merge", "longqa.publish", "sft.run", "sft.eval", "sft.merge", "sft.publish")


def field_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field of `model` as a dotted key; sections (and lists of sections) contribute their own fields."""
    keys = set()
    for name, info in model.model_fields.items():
        candidates = (info.annotation, *typing.get_args(info.annotation))
        section = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        keys |= field_keys(section, f"{prefix}{name}.") if section else {prefix + name}
    return keys


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_every_field_has_a_flag_and_every_flag_a_field(module):
    command: Command = importlib.import_module(module).COMMAND
    assert set(command.flags) == field_keys(command.model)
    own = {"-h", "--help", "--config", "--print-config", "--quiet", "--verbose", "--no-progress"}
    generated = {o for flag in command.flags.values() for o in flag.options}
    declared = {o for action in command.parser._actions for o in action.option_strings}
    assert declared - own == generated


def test_flags_follow_the_field_types():
    from sft.run import COMMAND

    over = COMMAND.overrides(["--max-length", "2048", "--save-total-limit", "null", "--no-bf16", "--resume",
                              "--lora-target-modules", "q_proj,v_proj", "--lora-target-modules", "o_proj",
                              "--data", "a", "--data", "b", "--deepspeed", "null"])
    assert over == {"max_length": "2048", "save_total_limit": None, "bf16": False, "resume": True,
                    "lora_target_modules": ["q_proj", "v_proj", "o_proj"], "data": ["a", "b"], "deepspeed": None}
    cfg = resolve(TrainConfig, {"mode": "extend"}, over)
    assert cfg.max_length == 2048 and cfg.save_total_limit is None and cfg.data == ["a", "b"] and not cfg.bf16
    assert COMMAND.overrides(["--data", "x"]) == {"data": "x"}  # one value stays one value


def test_free_form_settings_merge_into_the_recipes_and_mappings_replace_it(tmp_path):
    """``--train-overrides max_steps=2`` once replaced the recipe's whole train_overrides (its RoPE scaling and
    learning rate silently gone); now free-form settings merge, dotted names reach in, values are YAML. A typed
    mapping (``--models``) still replaces: the flag names the models to compare."""
    from schemas.experiment import ExperimentConfig
    from sft.eval import COMMAND as EVAL

    EXPERIMENT = Command("python -m sft.experiment", "", ExperimentConfig)

    recipe = {"name": "x", "train": "t.yaml", "train_overrides": {"rope_scaling": "yarn", "learning_rate": 2e-4},
              "arms": [{"name": "a", "overrides": {"s2_attn": False}}],
              "eval": {"tasks": ["qa"], "qa": {"limit": 20, "split": "test"}}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(recipe))
    cfg, _, _ = EXPERIMENT.configure(["--config", str(tmp_path / "exp.yaml"), "--train-overrides", "max_steps=2",
                                      "--eval", "qa.limit=2", "passkey.lengths=[512, 1024]", "dtype=null",
                                      "--arms.overrides", "lora_r=4"])
    assert cfg.train_overrides == {"rope_scaling": "yarn", "learning_rate": 2e-4, "max_steps": 2}
    assert cfg.eval == {"tasks": ["qa"], "qa": {"limit": 2, "split": "test"}, "passkey": {"lengths": [512, 1024]},
                        "dtype": None}
    assert cfg.arms[0].overrides == {"s2_attn": False, "lora_r": 4}
    assert recipe["eval"]["qa"]["limit"] == 20  # the recipe's own mapping is not changed in place
    _, problems, _ = EXPERIMENT.configure(["--config", str(tmp_path / "exp.yaml"), "--eval", "qa.limit=[2"])
    assert any("qa.limit='[2': the value is not valid YAML" in p for p in problems)
    models = EVAL.overrides(["--models", "mine=path/to/merged"])["models"]
    assert models == {"mine": "path/to/merged"} and type(models) is dict
    cfg, _, _ = EVAL.configure(["--models", "mine=path/to/merged"])
    assert cfg.models == {"mine": "path/to/merged"}  # not merged into the default base/tuned


def test_help_shows_description_choices_and_default(capsys):
    from sft.run import COMMAND

    with pytest.raises(SystemExit):
        COMMAND.parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--too-long {drop,error}" in text and "--s2-attn, --no-s2-attn" in text
    assert "checkpoints kept (oldest deleted); null keeps all [default: 2] (accepts null)" in text


def test_sections_are_dotted_and_aliases_are_the_same_flag():
    from sft.eval import COMMAND

    over = COMMAND.overrides(["--qa.limit", "200", "--limit", "100", "--passkey.lengths", "256,512",
                              "--models", "base=a", "tuned=b", "--tasks", "qa,passkey"])
    assert over == {"qa.limit": "100", "passkey.lengths": ["256", "512"], "models": {"base": "a", "tuned": "b"},
                    "tasks": ["qa", "passkey"]}
    from schemas.eval import EvalConfig

    cfg = resolve(EvalConfig, {"qa": {"split": "validation"}}, over)
    assert cfg.qa.limit == 100 and cfg.qa.split == "validation" and cfg.passkey.lengths == [256, 512]


def test_a_list_of_sections_takes_one_item_per_path():
    from longqa.build import COMMAND

    over = COMMAND.overrides(["--input", "a.csv", "--inputs.path", "b.csv", "--format", "csv", "--field",
                              "document=context", "question=q"])
    from schemas.build import BuildConfig

    cfg = resolve(BuildConfig, {}, over)
    assert [(i.path, i.format, i.fields) for i in cfg.inputs] == [
        ("a.csv", "csv", {"document": "context", "question": "q"}), ("b.csv", "csv", {"document": "context",
                                                                                      "question": "q"})]
    recipe = {"inputs": [{"path": "x.jsonl", "format": "jsonl"}, {"path": "y.jsonl", "format": "jsonl"}]}
    cfg = resolve(BuildConfig, recipe, COMMAND.overrides(["--inputs.license", "mit"]))  # no path: every item
    assert [i.license for i in cfg.inputs] == ["mit", "mit"]


def test_cross_field_checks_run_even_when_a_field_fails(tmp_path):
    from sft.run import COMMAND

    cfg, problems, _ = COMMAND.configure(["--max-steps", "0", "--warmup-steps", "5", "--save-total-limit", "0",
                                          "--output-dir", str(tmp_path)])
    text = "\n".join(problems)
    assert "max_steps: Input should be greater than or equal to 1 (got 0)" in text
    assert "warmup_steps: 5 exceeds max_steps (0)" in text and "save_total_limit:" in text


def test_null_where_a_field_is_not_optional_is_a_problem():
    from sft.run import COMMAND

    _, problems, _ = COMMAND.configure(["--max-length", "null", "--output-dir", "null"])
    assert any(p.startswith("max_length: Input should be a valid integer (got null)") for p in problems)
    assert any(p.startswith("output_dir: Input should be a valid string (got null)") for p in problems)


def test_a_misspelled_flag_exits_2_with_a_suggestion(capsys):
    from sft.run import main

    assert main(["--max-lenght", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unrecognized arguments: --max-lenght 8")
    assert "--max-length?" in err


def test_print_config_shows_the_config_and_every_problem(tmp_path, capsys, monkeypatch):
    from sft.run import main

    monkeypatch.chdir(tmp_path)
    assert main(["--print-config", "--max-steps", "3", "--warmup-steps", "4"]) == 2
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["max_steps"] == 3
    assert "warmup_steps: 4 exceeds max_steps (3)" in err and "data: out does not exist" in err


def test_build_paths_are_checked_before_the_tokenizer_loads(tmp_path, capsys, monkeypatch):
    from longqa.build import main

    monkeypatch.setattr("longqa.pipeline.build", lambda *a, **k: pytest.fail("the build started"))
    (tmp_path / "docs").mkdir()
    code = main(["--input", str(tmp_path / "missing.jsonl"), "--format", "longbench", "--input",
                 str(tmp_path / "docs"), "--deny-docs", str(tmp_path / "deny.txt"), "--tokenizer",
                 str(tmp_path / "tok")])
    err = capsys.readouterr().err
    assert code == 2 and "3 problem(s)" in err
    for text in ("inputs.0.path: ", "missing.jsonl does not exist", "deny_docs: ", "tokenizer: "):
        assert text in err
    code = main(["--inputs.path", str(tmp_path / "docs"), "--format", "docs", "--print-config"])
    assert code == 2 and "inputs.0.qa_file: " in capsys.readouterr().err


def test_the_wrapper_turns_user_errors_into_one_line_and_keeps_tracebacks_for_bugs(capsys):
    from schemas.train import TrainConfig

    command = Command("prog", "prog\n\nA test command.", TrainConfig)

    def fails(error):
        def body(cfg, options):
            raise error
        return body

    assert command.main([], fails(DataError("data.jsonl:3: no answer; fix the line"))) == 1
    assert capsys.readouterr().err == "error: data.jsonl:3: no answer; fix the line\n"
    assert command.main([], fails(ConfigError("x: bad"))) == 2
    assert command.main([], fails(PermissionError(13, "Permission denied", "/data/x.jsonl"))) == 1
    assert "error: /data/x.jsonl: cannot be read or written (permission denied)" in capsys.readouterr().err
    with pytest.raises(KeyError):  # a bug: its traceback shows
        command.main([], fails(KeyError("oops")))


def test_logging_is_plain_lines_on_stdout_and_warnings_on_stderr(capsys, monkeypatch):
    setup_logging()
    logging.getLogger("sft.test").info("status line")
    logging.getLogger("sft.test").debug("hidden")
    logging.getLogger("transformers.test").info("library chatter")
    logging.getLogger("sft.test").warning("careful")
    out, err = capsys.readouterr()
    assert out == "status line\n" and err == "warning: careful\n"
    setup_logging(quiet=True)
    logging.getLogger("sft.test").info("status line")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "1")
    setup_logging()
    logging.getLogger("sft.test").warning("rank 1 is silent")
    assert capsys.readouterr() == ("", "")
    monkeypatch.delenv("RANK")
    setup_logging()


def test_every_error_class_is_a_user_error():
    from longqa.hub import HubError, PublishError
    from longqa.merge import MergeError
    from longqa.pipeline import BuildError
    from sft.data import DataError as TrainDataError
    from sft.model import AdapterSetupError
    from sft.train import NonFiniteLoss

    for error in (HubError, PublishError, MergeError, BuildError, TrainDataError, AdapterSetupError, NonFiniteLoss):
        assert issubclass(error, UserError), error
    assert importlib.import_module("sft.publish").PublishError is PublishError
    assert importlib.import_module("longqa.publish").PublishError is PublishError


def test_a_command_run_as_a_module_logs_its_own_lines():
    """Under `python -m` the command's module logger is `__main__`: its INFO lines show too."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import logging, sys; from schemas.cli import setup_logging; setup_logging(); "
            "logging.getLogger('__main__').info('own line')")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": ""})
    assert done.stdout == "own line\n", done.stderr


def test_no_progress_silences_the_libraries_bars_too(monkeypatch, capsys):
    """transformers' GGUF conversion bar is plain tqdm (it showed under ``sft.run --no-progress``)."""
    import os

    from tqdm.auto import tqdm as library_bar
    from tqdm.std import tqdm as base

    monkeypatch.setattr(base, "__init__", base.__init__)  # restored after the test

    from schemas.train import TrainConfig

    for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    command = Command("prog", "prog\n\nA test command.", TrainConfig)

    def body(cfg, options):
        for _ in library_bar(range(3), desc="library bar"):
            pass

    assert command.main(["--no-progress"], body) == 0
    assert "library bar" not in capsys.readouterr().err
    assert os.environ["TQDM_DISABLE"] == os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
