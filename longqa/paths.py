"""Model references: a folder, a Hub id, a .gguf file or `pkg:MODULE/relative/path` (a file inside an installed
package). Paths themselves are resolved by `schemas.paths` (re-exported here: `resolve_path`, `local_path`)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from schemas.errors import ConfigError, ModelError
from schemas.paths import GGUF_SUFFIX, local_path, resolve_path  # noqa: F401 (re-exported)


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


@contextlib.contextmanager
def hub_errors(ref: str) -> Iterator[None]:
    """Turn the OSError transformers raises for a Hub id it cannot fetch (offline, unknown, gated) into a ModelError
    that names the reference and what to do. Errors of local files pass unchanged (they name their file)."""
    try:
        yield
    except OSError as e:
        if ref.startswith("pkg:") or local_path(ref) is not None:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{ref}: cannot be loaded as a Hub id ({first}); check the id and the network (HF_ENDPOINT, "
                         f"HF_HUB_OFFLINE), or download it once (hf download {ref}) and give its folder") from None


def resolve_source(ref: str) -> ModelSource:
    """Split `ref` into a folder or Hub id and an optional GGUF file name."""
    local = local_path(ref)
    if local is not None:
        path = local.resolve()
        name = ref if ref.startswith("pkg:") else str(path)
        if path.is_file():
            if path.suffix != GGUF_SUFFIX:
                raise ConfigError(f"{ref}: a model file must be {GGUF_SUFFIX}; otherwise give the model's folder")
            return ModelSource(ref, str(path.parent), path.name, name)
        return ModelSource(ref, str(path), None, name)
    if ref.endswith(GGUF_SUFFIX):
        raise FileNotFoundError(f"{ref}: GGUF file not found")
    return ModelSource(ref, ref, None, ref)  # a Hub id
