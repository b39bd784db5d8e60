"""python -m longqa.publish DATASET_DIR --repo-id ORG/NAME [--private] [--revision R] [--dry-run DIR] [--endpoint URL]

Stage a built dataset exactly as the Hub shows it — parquet shards `data/{split}-{i:05d}-of-{n:05d}.parquet` (the chat
text, default config) and `tokenized/…` (the tokenized config), `README.md` with the card and Hub YAML (configs,
dataset_info, license, task categories, size category), the manifest and the length plot — verify that
`datasets.load_dataset` on the staged folder gives the built splits, rows and features, then upload it in one commit.
With --dry-run DIR it stops after staging and verifying DIR.
"""
from __future__ import annotations

import copy
import logging
import json
import shutil
import sys
from pathlib import Path

import datasets

from longqa.card import render_card
from longqa.describe import table_of
from longqa.hub import PublishError, publish
from longqa.manifest import fingerprint, fingerprint_version
from longqa.write import quiet_datasets
from schemas.cli import Command, Options
from schemas.paths import dataset_publish_problems
from schemas.publish import DatasetPublishConfig

log = logging.getLogger(__name__)

#: Hub config name -> (built dataset folder, staged folder). The first is the default config.
LAYOUT = {"default": ("text", "data"), "tokenized": ("tokenized", "tokenized")}
MAX_SHARD_BYTES = 500 * 1024**2


def shard_name(folder: str, split: str, i: int, n: int) -> str:
    return f"{folder}/{split}-{i:05d}-of-{n:05d}.parquet"


def _dataset_info(built: dict[str, datasets.DatasetDict], staged: Path) -> dict:
    """The `dataset_info` YAML of every config: features, split sizes, download size."""
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    infos = {}
    for config, (name, folder) in LAYOUT.items():
        dd = built[name]
        first = next(iter(dd.values()))
        info = copy.deepcopy(first.info)
        info.config_name = config
        info.splits = datasets.SplitDict()
        for split, ds in dd.items():
            info.splits.add(datasets.SplitInfo(name=split, num_bytes=table_of(ds).nbytes, num_examples=len(ds)))
        info.download_size = sum(p.stat().st_size for p in (staged / folder).glob("*.parquet"))
        info.dataset_size = sum(s.num_bytes for s in info.splits.values())
        infos[config] = info
    card_data = DatasetCardData()
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    return {"dataset_info": card_data.to_dict()["dataset_info"]}


def stage(dataset_dir: Path, out: Path, repo_id: str) -> dict:
    """Write the Hub tree of `dataset_dir` into `out` (a new or empty folder); returns the manifest."""
    manifest_file = dataset_dir / "manifest.json"
    if not manifest_file.is_file():
        raise PublishError(f"{dataset_dir}: no manifest.json — not a finished `python -m longqa.build` output")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    built = {name: datasets.load_from_disk(str(dataset_dir / name)) for name, _ in LAYOUT.values()}
    data_files = {}
    with quiet_datasets():
        for config, (name, folder) in LAYOUT.items():
            (out / folder).mkdir()
            data_files[config] = {}
            for split, ds in built[name].items():
                n = max(1, -(-table_of(ds).nbytes // MAX_SHARD_BYTES))
                for i in range(n):
                    ds.shard(n, i, contiguous=True).to_parquet(str(out / shard_name(folder, split, i, n)))
                data_files[config][split] = f"{folder}/{split}-*.parquet"
    for extra in ("manifest.json", "lengths.png"):
        shutil.copy2(dataset_dir / extra, out / extra)
    card = render_card(manifest, repo_id=repo_id, data_files=data_files, extra=_dataset_info(built, out))
    (out / "README.md").write_text(card, encoding="utf-8")
    return manifest


def verify(staged: Path, manifest: dict) -> None:
    """`datasets.load_dataset` on the staged folder gives the built splits, rows (by fingerprint) and features."""
    with quiet_datasets():
        for config, (name, _) in LAYOUT.items():
            loaded = datasets.load_dataset(str(staged), config, cache_dir=str(staged.parent / f".{staged.name}-cache"))
            expected = manifest["fingerprints"][name]
            if set(loaded) != set(expected):
                raise PublishError(f"{staged}: config {config} loads splits {sorted(loaded)}, built {sorted(expected)}")
            for split, ds in loaded.items():
                if fingerprint(ds.data.table, fingerprint_version(expected[split])) != expected[split]:
                    raise PublishError(f"{staged}: config {config} split {split} does not load the built rows")
    shutil.rmtree(staged.parent / f".{staged.name}-cache", ignore_errors=True)


def publish_dataset(cfg: DatasetPublishConfig, options: Options) -> None:
    def prepare(staged: Path) -> str:
        manifest = stage(Path(cfg.dataset_dir), staged, cfg.repo_id)
        verify(staged, manifest)
        log.info("%d parquet shards staged and verified", sum(1 for _ in staged.rglob("*.parquet")))
        return f"Upload {manifest['name']} with longqa"

    publish(cfg, "dataset", prepare)


COMMAND = Command("python -m longqa.publish", __doc__, DatasetPublishConfig, paths=dataset_publish_problems,
                  positional=("dataset_dir",))


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv, publish_dataset)


if __name__ == "__main__":
    sys.exit(main())
