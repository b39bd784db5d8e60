"""What an evaluation ran on, so that its numbers can be reproduced and compared: library versions, the device,
a fingerprint of each model's files (an adapter's and its base's) and of the evaluated data and questions.

Fingerprints are sha256 over the files that define the model (weights, configs, tokenizer, chat template; not
README cards) or the data (a built dataset's manifest fingerprint of the split; a file's bytes). A Hub id that is not
on disk has no fingerprint: pin a revision or evaluate a local copy to make it reproducible.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EVAL_LIBRARIES = ("longqa", "torch", "transformers", "peft", "accelerate", "tokenizers", "datasets", "gguf")
MODEL_FILES = (".safetensors", ".bin", ".gguf", ".json", ".jinja", ".model", ".txt")  # not README.md cards


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running, as a user would type it: ``python SCRIPT ARGS`` (``argv`` replaces the
    arguments when a script's ``main`` was called with its own), the script relative to the working directory."""
    script = Path(sys.argv[0])
    if script.is_absolute():
        try:
            script = script.relative_to(Path.cwd())
        except ValueError:
            pass
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", str(script), *args])


def script_device(cpu_smoke: bool) -> str | None:
    """The device of a GPU script (``benchmarks/gpu/``): "cpu" for ``--cpu-smoke``, "cuda" when one is there, else
    None after saying so on stderr (the script then exits 2)."""
    import sys

    import torch

    if cpu_smoke:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    print("error: no CUDA device (use --cpu-smoke to check the script on a CPU)", file=sys.stderr)
    return None


def device_name(device: str = "cpu") -> str:
    """The device by name: the CUDA device's, or the CPU model (from /proc/cpuinfo) with the cores this process
    may use."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({cores} cores visible)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({cores} cores visible)"


def environment(device: str, dtype: str) -> dict[str, Any]:
    """Library versions, the device by name, CPU threads and the dtype."""
    import torch

    from longqa.manifest import library_versions

    return {"versions": library_versions(EVAL_LIBRARIES), "device": f"{device} ({device_name(device)})",
            "threads": torch.get_num_threads(), "dtype": dtype}


def model_fingerprint(ref: str) -> dict[str, Any]:
    """``{"sha256": ...}`` of the files of model reference `ref` (None when it is not on disk: a Hub id); for an
    adapter folder also ``base`` (its base model's reference) and ``base_sha256``."""
    from longqa.manifest import file_sha256
    from longqa.paths import local_path

    local = local_path(ref)
    if local is None:
        return {"sha256": None}
    found: dict[str, Any] = {"sha256": file_sha256(local, MODEL_FILES)}
    adapter_config = local / "adapter_config.json" if local.is_dir() else None
    if adapter_config is not None and adapter_config.is_file():
        base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        found["base"] = base
        found["base_sha256"] = model_fingerprint(base)["sha256"] if base else None
    return found


def data_fingerprint(data: str, split: str | None = None) -> dict[str, Any]:
    """A built dataset folder: its name and the manifest's fingerprint of `split` (text); a file: its sha256."""
    from longqa.manifest import file_sha256

    path = Path(data)
    manifest = path / "manifest.json"
    if path.is_dir() and manifest.is_file():
        built = json.loads(manifest.read_text(encoding="utf-8"))
        fingerprints = built.get("fingerprints", {}).get("text", {})
        return {"data": data, "built": built.get("name"), "split": split,
                "fingerprint": fingerprints.get(split) if split else fingerprints}
    if path.is_file():
        return {"data": data, "sha256": file_sha256(path)}
    if path.is_dir():  # a folder of documents (a split of the long-text corpus)
        return {"data": data, "sha256": file_sha256(path, (".jsonl", ".txt", ".md"))}
    return {"data": data, "sha256": None}


def ids_sha256(ids: Sequence[str]) -> str:
    """Fingerprint of the evaluated items, in order (one id per line)."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def emit_result(text: str, out: str | Path | None) -> None:
    """A benchmark's result: printed, and written atomically to `out` (a results/*.md file) when given."""
    from longqa.atomic import write_text

    print(text)
    if out:
        write_text(out, text)
