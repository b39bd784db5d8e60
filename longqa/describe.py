"""The describe stage: manifest, length plot and dataset card of a finished output folder.

It reads what was written (not what was meant to be), so the statistics and fingerprints describe the files on disk;
the build and `longqa.merge` share it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc

import longqa
from longqa.card import render_card
from longqa.manifest import Tally, describe_inputs, fingerprint, length_stats, library_versions
from longqa.plots import plot_lengths
from schemas import BuildConfig
from schemas.build import SYNTHETIC_TASKS


def tokenizer_info(tokenizer, ref: str) -> dict:
    template = getattr(tokenizer, "chat_template", None) or ""
    return {"ref": ref, "class": type(tokenizer).__name__, "vocab_size": len(tokenizer),
            "eos_token": tokenizer.eos_token,
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None}


def table_of(ds: datasets.Dataset):
    """The Arrow table of a split (a split saved with no rows has no Arrow file to memory-map)."""
    return ds.data.table if len(ds) else ds.features.arrow_schema.empty_table()


def mix_table(mix: list[dict], counts: dict) -> dict:
    """The mix: each input (available, drawn, not drawn, written by split) and the written samples by role."""
    inputs, by_role = [], {}
    for entry in mix:
        written = counts["by_source"].get(entry["source"], {}).get("written", {})
        inputs.append({**entry, "written": sum(written.values()), "written_by_split": written})
        by_role[entry["role"]] = by_role.get(entry["role"], 0) + sum(written.values())
    total = sum(by_role.values())
    return {"inputs": inputs, "by_role": {role: {"samples": n, "share": round(n / total, 4) if total else 0.0}
                                          for role, n in by_role.items()}}


def describe(out: Path, cfg: BuildConfig, tally: Tally, *, tokenizer=None, tokenizer_meta: dict | None = None,
             seconds: float | None = None, parts: list[str] | None = None, mix: list[dict] | None = None,
             distractors: dict | None = None) -> dict:
    tokenized = datasets.load_from_disk(str(out / "tokenized"))
    text = datasets.load_from_disk(str(out / "text"))
    lengths = {split: np.asarray(table_of(ds).column("length").to_numpy(), dtype=np.int64)
               for split, ds in tokenized.items()}
    truncation = {}
    for split, ds in tokenized.items():
        dropped = table_of(ds).column("n_doc_tokens_dropped")
        truncation[split] = {"samples_truncated": int(pc.sum(pc.greater(dropped, 0)).as_py() or 0),
                             "doc_tokens_dropped": int(pc.sum(dropped).as_py() or 0)}
    truncation["total"] = {k: sum(v[k] for v in truncation.values()) for k in ("samples_truncated",
                                                                            "doc_tokens_dropped")}
    manifest = {
        "name": cfg.name,
        "created_by": f"longqa {longqa.__version__}",
        "config": cfg.recorded(),
        "inputs": describe_inputs(cfg.inputs),
        "versions": library_versions(),
        "tokenizer": tokenizer_info(tokenizer, cfg.tokenizer) if tokenizer is not None else tokenizer_meta,
        "counts": tally.as_dict(),
        "tokens": {split: length_stats(v) for split, v in lengths.items()},
        "truncation": truncation,
        "fingerprints": {"text": {s: fingerprint(table_of(ds)) for s, ds in text.items()},
                         "tokenized": {s: fingerprint(table_of(ds)) for s, ds in tokenized.items()}},
        "files": {"text": "text/", "tokenized": "tokenized/", "rejects": "rejects.jsonl",
                  "plot": "lengths.png", "card": "README.md"},
    }
    if mix is not None:
        manifest["mix"] = mix_table(mix, manifest["counts"])
    synthetic = {task: SYNTHETIC_TASKS[task] for spec in cfg.inputs if spec.synthetic is not None
                 for task, weight in spec.synthetic.tasks.items() if weight > 0}
    if synthetic:  # the card says which evaluation tasks these resemble
        manifest["synthetic_tasks"] = synthetic
    if distractors is not None:  # longqa.distract: samples composed per split, and the evidence found
        manifest["distractors"] = {"inputs": {spec.path: spec.distractors.model_dump(mode="json")
                                              for spec in cfg.inputs if spec.distractors},
                                   "by_split": distractors}
    if seconds is not None:
        manifest["build_seconds"] = round(seconds, 2)
    if parts is not None:
        manifest["merged_from"] = parts
    plot_lengths(lengths, cfg.max_length, out / "lengths.png", f"{cfg.name}: tokens per sample")
    (out / "README.md").write_text(render_card(manifest), encoding="utf-8")
    # The manifest is written last: its presence marks a complete output.
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest
