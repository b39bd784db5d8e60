"""Model references: a folder, a Hub id, a .gguf file or `pkg:MODULE/relative/path` (a file inside an installed
package). Paths themselves are resolved by `schemas.paths` (re-exported here: `resolve_path`, `local_path`)."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ConfigError, ModelError
from schemas.paths import GGUF_SUFFIX, local_path, resolve_path  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


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


def cache_dir() -> Path:
    """The project's cache: ``$LONGQA_CACHE``, else ``$XDG_CACHE_HOME/longqa`` (``~/.cache/longqa``)."""
    if os.environ.get("LONGQA_CACHE"):
        return Path(os.environ["LONGQA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "longqa"


def load_tokenizer(ref: str):
    """The tokenizer of `ref` (a folder, a Hub id or a GGUF file). A GGUF file's tokenizer is rebuilt by transformers
    from the file's metadata (about 4.5 s for SmolLM2's, mostly reading its 49k-entry vocabulary) and saved once as
    tokenizer files under :func:`cache_dir`, keyed by the file's path, size and modification time; later loads read
    those (well under a second). The saved tokenizer is the same: ids, special tokens and chat template."""
    from transformers import AutoTokenizer  # `import longqa` stays free of transformers

    source = resolve_source(ref)
    if source.gguf_file is None:
        with hub_errors(ref):
            return AutoTokenizer.from_pretrained(source.location, **source.kwargs())
    gguf = Path(source.location) / source.gguf_file
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    folder = cache_dir() / "tokenizers" / key
    if (folder / "tokenizer.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as e:  # a damaged cache entry: rebuilt below
            log.warning("tokenizer cache %s unreadable (%s); rebuilding it from %s", folder, e, gguf)
    tokenizer = AutoTokenizer.from_pretrained(source.location, **source.kwargs())
    from longqa.atomic import replace_dir

    tmp = folder.with_name(f".{key}.tmp-{os.getpid()}")
    try:
        tokenizer.save_pretrained(str(tmp))
        replace_dir(tmp, folder)  # a damaged entry swapped out in one step
    except OSError as e:  # a read-only cache costs only time
        log.warning("could not cache the tokenizer of %s in %s (%s)", gguf, folder, e)
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer
