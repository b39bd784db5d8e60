"""python -m longqa.build [--config recipe.yaml] [--input PATH --format FORMAT ...] [--out DIR]

Build a LongQA dataset: read → validate → deduplicate → split → render → tokenize → write → describe.
With no --config and no --input, builds the embedded default recipe (SQuAD v2 dev articles, SmolLM2 chat template).
Flags override the recipe; --print-config shows the resolved configuration and exits.
"""
from __future__ import annotations

import argparse
import logging
import sys


from longqa.config import ConfigError, config_or_exit, default_recipe, load_recipe, resolve
from schemas import BuildConfig
from schemas.build import MAPPABLE_FIELDS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m longqa.build", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML recipe (see configs/build/)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    src = p.add_argument_group("inputs (replace the recipe's inputs)")
    src.add_argument("--input", action="append", metavar="PATH", help="input file or folder; repeatable")
    src.add_argument("--format", help="longalpaca, longbench, squad, jsonl, csv, parquet, hf-disk or docs")
    src.add_argument("--field", action="append", default=[], metavar="NAME=COLUMN",
                     help=f"field mapping for jsonl/csv/parquet/hf-disk/docs; NAME in {', '.join(MAPPABLE_FIELDS)}")
    src.add_argument("--qa-file", help="docs: the JSONL of {doc, question, answer} (default PATH/qa.jsonl)")
    src.add_argument("--license", help="license of the inputs and the dataset")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="output folder (default out/)")
    out.add_argument("--name", help="dataset name")
    tok = p.add_argument_group("rendering and tokenization")
    tok.add_argument("--tokenizer", help="tokenizer folder, Hub id, .gguf file or pkg:MODULE/path")
    tok.add_argument("--max-length", type=int, help="token budget per sample")
    tok.add_argument("--template", help="chat (the tokenizer's), llama2-inst or alpaca")
    tok.add_argument("--system", help="system message")
    tok.add_argument("--instruction", help="text placed just before the question")
    tok.add_argument("--question-position", help="after (default) or before the material")
    tok.add_argument("--truncation", help="part of over-long documents removed: middle (default), head or tail")
    chk = p.add_argument_group("validation and splits")
    chk.add_argument("--strict", action="store_true", default=None, help="stop at the first invalid record")
    chk.add_argument("--min-doc-chars", type=int)
    chk.add_argument("--max-doc-chars", type=int)
    chk.add_argument("--heldout-fraction", type=float, help="share of documents held out")
    chk.add_argument("--heldout-doc", action="append", metavar="ID_OR_TITLE", help="hold out this document")
    chk.add_argument("--deny-docs", metavar="FILE", help="doc ids or titles (one per line) kept out of every split")
    run = p.add_argument_group("scale")
    run.add_argument("--num-proc", type=int, help="tokenizing processes (all cores are used either way)")
    run.add_argument("--shard-index", type=int, help="build part i ...")
    run.add_argument("--num-shards", type=int, help="... of n (merge the parts with python -m longqa.merge)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict:
    """Flags that were given, as configuration fields."""
    over = {key: getattr(args, key) for key in (
        "out", "name", "license", "tokenizer", "max_length", "template", "system", "instruction",
        "question_position", "truncation", "strict", "min_doc_chars", "max_doc_chars", "heldout_fraction",
        "deny_docs", "num_proc", "shard_index", "num_shards")}
    over["heldout_docs"] = args.heldout_doc
    if args.input:
        fields = {}
        for item in args.field:
            name, sep, column = item.partition("=")
            if not sep:
                raise ConfigError(f"--field {item}: expected NAME=COLUMN")
            fields[name] = column
        over["inputs"] = [{"path": path, "format": args.format, "fields": fields, "qa_file": args.qa_file,
                           "license": args.license} for path in args.input]
    elif args.field or args.format or args.qa_file:
        raise ConfigError("--format/--field/--qa-file describe inputs: give them with --input")
    return over


def summary_table(manifest: dict) -> str:
    counts, tokens, trunc = manifest["counts"], manifest["tokens"], manifest["truncation"]
    rows = [("split", "samples", "tokens", "median", "p90", "max", "truncated", "doc tok dropped")]
    for split, t in tokens.items():
        rows.append((split, t["samples"], t["tokens"], t.get("median", "-"), t.get("p90", "-"), t.get("max", "-"),
                     trunc[split]["samples_truncated"], trunc[split]["doc_tokens_dropped"]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in rows]
    reasons = ", ".join(f"{k} {v}" for k, v in counts["by_reason"].items()) or "none"
    lines.append(f"read {counts['read']} = written {counts['written']} + rejected {counts['rejected']} "
                 f"({reasons})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    def make() -> BuildConfig:
        base, origin = (load_recipe(args.config), args.config) if args.config else (
            ({}, "flags") if args.input else (default_recipe(), "default recipe"))
        return resolve(base, overrides_from(args), origin)

    cfg = config_or_exit(make, args.print_config)
    if isinstance(cfg, int):
        return cfg
    from longqa.pipeline import BuildError, build

    try:
        manifest = build(cfg, progress=not args.quiet)
    except (BuildError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary_table(manifest))
    print(f"wrote {cfg.out}/ (text/, tokenized/, manifest.json, rejects.jsonl, lengths.png, README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
