"""python -m longqa.merge PART [PART ...] --out DIR

Combine the outputs of `python -m longqa.build --shard-index i --num-shards n` (one per machine) into one dataset
whose rows, order and fingerprints equal a single-machine build: rows are re-ordered by their global read position.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import datasets

from longqa.describe import describe
from longqa.manifest import Tally
from longqa.atomic import atomic_output
from schemas.outdir import guard
from longqa.write import DATASETS, save_dict
from schemas import BuildConfig
from schemas.cli import Command, Options
from schemas.errors import ConfigError
from schemas.merge import ShardMergeConfig
from schemas.paths import shard_merge_problems

log = logging.getLogger(__name__)

_PER_PART = ("shard_index", "out", "overwrite")


class MergeError(ConfigError):
    """The parts given do not make one dataset (unfinished, built differently, or not every shard)."""


def load_parts(parts: list[Path]) -> list[dict]:
    manifests = []
    for part in parts:
        file = part / "manifest.json"
        if not file.is_file():
            raise MergeError(f"{part}: no manifest.json (not a finished build)")
        manifests.append(json.loads(file.read_text(encoding="utf-8")))
    first = {k: v for k, v in manifests[0]["config"].items() if k not in _PER_PART}
    for part, m in zip(parts, manifests):
        other = {k: v for k, v in m["config"].items() if k not in _PER_PART}
        if other != first:
            diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise MergeError(f"{part}: built with a different configuration ({', '.join(diff)}) than {parts[0]}")
        if [i["sha256"] for i in m["inputs"]] != [i["sha256"] for i in manifests[0]["inputs"]]:
            raise MergeError(f"{part}: built from different input files than {parts[0]}")
    indices = sorted(m["config"]["shard_index"] for m in manifests)
    expected = list(range(first["num_shards"]))
    if indices != expected:
        raise MergeError(f"parts cover shard indices {indices}; a complete merge needs {expected}")
    return manifests


def merge(parts: list[Path], out: Path, overwrite: bool = False) -> dict:
    guard(out, "longqa.merge", inputs=parts, overwrite=overwrite)
    manifests = load_parts(parts)
    cfg = BuildConfig.model_validate({**manifests[0]["config"], "shard_index": 0, "num_shards": 1, "out": str(out)})
    with atomic_output(out, "longqa.merge") as tmp:
        for name in DATASETS:
            loaded = [datasets.load_from_disk(str(p / name)) for p in parts]
            merged = datasets.DatasetDict({split: datasets.concatenate_datasets([d[split] for d in loaded]).sort("seq")
                                           for split in loaded[0]})
            save_dict(merged, tmp / name, cfg.max_shard_size)
        rejects = [line for p in parts for line in (p / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
        rejects.sort(key=lambda line: json.loads(line)["seq"])
        (tmp / "rejects.jsonl").write_text("".join(line + "\n" for line in rejects), encoding="utf-8")
        tally = Tally.from_dicts([m["counts"] for m in manifests])
        return describe(tmp, cfg, tally, tokenizer_meta=manifests[0]["tokenizer"], parts=[str(p) for p in parts])


def merge_parts(cfg: ShardMergeConfig, options: Options) -> None:
    manifest = merge([Path(p) for p in cfg.parts], Path(cfg.out), cfg.overwrite)
    c = manifest["counts"]
    log.info("merged %d parts into %s/: read %d = written %d + rejected %d", len(cfg.parts), cfg.out, c["read"],
             c["written"], c["rejected"])


COMMAND = Command("python -m longqa.merge", __doc__, ShardMergeConfig, paths=shard_merge_problems,
                  positional=("parts",))


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv, merge_parts)


if __name__ == "__main__":
    sys.exit(main())
