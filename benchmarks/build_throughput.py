"""python benchmarks/build_throughput.py [--samples 1200] [--num-proc 1 2 4] [--repeats 3] [--out FILE.md]

The full builder vs a bare batched call of the same fast tokenizer (its own threads, all cores), on the same rendered
samples, side by side in one run. Two corpora made from the SQuAD v2 dev articles of the default recipe:
- `unique`: every sample has its own document (an article with its paragraphs rotated), so nothing can be reused;
- `squad`: the default recipe as it is (dozens of questions per article; the builder tokenizes each article once).
The throughput of both is counted in the same tokens: those of the full rendered samples (no truncation,
max_length above the longest sample). Also: every --num-proc setting vs the best, and peak RSS of a build of the
`unique` corpus at 1x and 4x its size (each build in a fresh process).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longqa.build import default_recipe  # noqa: E402
from longqa.paths import resolve_path  # noqa: E402
from sft.evaluation.provenance import device_name  # noqa: E402

MAX_LENGTH = 65536


def unique_corpus(path: Path, samples: int, offset: int = 0) -> None:
    """LongBench JSONL: one row per answerable question, each with its own rotation of its article."""
    squad = json.loads(resolve_path(default_recipe()["inputs"][0]["path"]).read_text())
    rows, k = [], 0
    for article in squad["data"]:
        paragraphs = [p["context"] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                if qa.get("is_impossible") or not qa["answers"]:
                    continue
                r = (k + offset) % len(paragraphs)
                rows.append({"context": "\n\n".join(paragraphs[r:] + paragraphs[:r]) + f"\n\n(copy {k + offset})",
                             "input": qa["question"], "answers": [qa["answers"][0]["text"]], "_id": f"q{k}"})
                k += 1
    rows = (rows * (samples // len(rows) + 1))[:samples] if samples > len(rows) else rows[:samples]
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            row = {**row, "_id": f"q{i + offset}"}
            f.write(json.dumps(row) + "\n")


from datasets import load_from_disk  # noqa: E402


def config(inputs: list[dict], tokenizer: str, out: Path, num_proc: int):
    from schemas import BuildConfig

    base = default_recipe()
    return BuildConfig.model_validate({**base, "inputs": inputs, "tokenizer": tokenizer, "out": str(out),
                                       "max_length": MAX_LENGTH, "num_proc": num_proc})


def bare_tokenizer(cfg, tokenizer, written: set[int]) -> dict[str, tuple[int, float]]:
    """Render the samples the builder wrote, then time one batched tokenizer call per 256 samples."""
    from longqa.pipeline import numbered
    from longqa.render import Renderer

    renderer = Renderer(cfg, tokenizer)
    texts = [renderer.render(r).text for r in numbered(cfg) if r.seq in written]
    def transformers_call(batch):
        return tokenizer(batch, add_special_tokens=False, return_attention_mask=False)["input_ids"]

    def rust_call(batch):  # what the builder calls: no Python-side BatchEncoding
        return [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(batch, add_special_tokens=False)]

    results = {}
    for name, call in (("transformers tokenizer()", transformers_call), ("Rust encode_batch_fast", rust_call)):
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(texts), 256):
            tokens += sum(len(x) for x in call(texts[i:i + 256]))
        results[name] = (tokens, time.perf_counter() - start)
    return results


def timed_build(cfg) -> tuple[float, dict]:
    from longqa.pipeline import build

    start = time.perf_counter()
    manifest = build(cfg, progress=False)
    return time.perf_counter() - start, manifest


def peak_rss_mb(cfg_json: str) -> float:
    """Peak RSS of a build in a fresh process."""
    code = ("import json,resource,sys;from schemas import BuildConfig;from longqa.pipeline import build;"
            "build(BuildConfig.model_validate(json.loads(sys.argv[1])),progress=False);"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, cfg_json], capture_output=True, text=True, cwd=ROOT, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=1200)
    p.add_argument("--num-proc", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=3, help="timed builds per setting (the fastest counts)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/build_throughput.md")
    args = p.parse_args()
    from datasets import disable_progress_bars

    from longqa.pipeline import load_tokenizer

    disable_progress_bars()

    work = Path(tempfile.mkdtemp(prefix="longqa-bench-"))
    tok_dir = work / "tokenizer"
    load_tokenizer(default_recipe()["tokenizer"]).save_pretrained(str(tok_dir))  # no GGUF conversion in the timings
    tokenizer = load_tokenizer(str(tok_dir))
    unique1, unique4 = work / "unique.jsonl", work / "unique4.jsonl"
    unique_corpus(unique1, args.samples)
    unique_corpus(unique4, 4 * args.samples, offset=7)
    corpora = {"unique": [{"path": str(unique1), "format": "longbench", "source": "unique"}],
               "squad": default_recipe()["inputs"]}
    lines = [f"# Build throughput ({time.strftime('%Y-%m-%d')})", "",
             f"`python benchmarks/build_throughput.py --samples {args.samples} --repeats {args.repeats}` (fastest of "
             f"{args.repeats} interleaved builds after a warm-up build) on {device_name('cpu')}, "
             f"Python {platform.python_version()}. Tokens: those of the full rendered samples; 'vs bare' is against "
             "the faster bare call.",
             "", "| corpus | run | seconds | tokens/s | vs bare tokenizer | vs best num_proc |",
             "|---|---|---:|---:|---:|---:|"]
    summary = {}
    for name, inputs in corpora.items():
        cfg = config(inputs, str(tok_dir), work / f"out-{name}", 1)
        runs, built_tokens = {n: [] for n in args.num_proc}, set()
        timed_build(config(inputs, str(tok_dir), work / f"out-{name}", 1))  # warm-up: lazy imports, caches
        for _ in range(args.repeats):  # interleaved, so a slow moment of the machine hits every setting alike
            for n in args.num_proc:
                seconds, manifest = timed_build(config(inputs, str(tok_dir), work / f"out-{name}", n))
                built_tokens.add(sum(t["tokens"] for t in manifest["tokens"].values()))
                runs[n].append(seconds)
        runs = {n: min(times) for n, times in runs.items()}
        written = {s for split in ("train", "test") for s in load_from_disk(str(cfg.out) + "/text")[split]["seq"]}
        bare = bare_tokenizer(cfg, tokenizer, written)
        tokens = {t for t, _ in bare.values()}
        assert built_tokens == tokens, f"builder {built_tokens} and bare {tokens} token counts differ"
        tokens = tokens.pop()
        bare_s = min(seconds for _, seconds in bare.values())  # ratios are against the faster bare call
        best = min(runs.values())
        for label, (_, seconds) in bare.items():
            lines.append(f"| {name} | bare: {label} | {seconds:.2f} | {tokens / seconds:,.0f} | "
                         f"{bare_s / seconds:.2f} | |")
        for n, seconds in runs.items():
            lines.append(f"| {name} | builder --num-proc {n} | {seconds:.2f} | {tokens / seconds:,.0f} | "
                         f"{bare_s / seconds:.2f} | {best / seconds:.2f} |")
        summary[name] = {"tokens": tokens, "bare_s": bare, "builder_s": runs}
    rss = {}
    for label, path in (("1x", unique1), ("4x", unique4)):
        cfg = config([{"path": str(path), "format": "longbench", "source": "unique"}], str(tok_dir),
                     work / f"out-rss-{label}", 1)
        rss[label] = peak_rss_mb(cfg.model_dump_json())
    lines += ["", f"Peak RSS, `unique` corpus, one process: 1x ({args.samples} samples) {rss['1x']:.0f} MB, "
              f"4x ({4 * args.samples} samples) {rss['4x']:.0f} MB: ratio {rss['4x'] / rss['1x']:.2f}."]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.write_text(report)
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
