"""python -m longqa.generate --docs DOCS --endpoint URL --model NAME [--config recipe.yaml] [--FIELD VALUE ...]

Questions and answers from a folder of documents by an OpenAI-compatible server, into DOCS/qa.jsonl (or --out), which
`python -m longqa.build --input DOCS --format docs` reads. Every field of GenerateConfig is a flag (`--help` lists
them). The API key comes from the variable named by --api-key-env (OPENAI_API_KEY by default) and is never printed or
written. Rerun the same command to continue a stopped run.
"""
from __future__ import annotations

import logging
import sys

from schemas.cli import Command, Options
from schemas.generate import GenerateConfig
from schemas.paths import resolve_path

log = logging.getLogger("longqa.generate")  # not __name__: run with -m, that is "__main__"


def generate_problems(cfg) -> list[str]:
    """The documents folder must exist (checked before any request, also under --print-config)."""
    docs = getattr(cfg, "docs", None)
    if not isinstance(docs, str):
        return []
    folder = resolve_path(docs)
    if not folder.is_dir():
        return [f"docs: {docs} " + ("is not a folder" if folder.exists() else "does not exist") +
                " (a folder of .txt/.md documents)"]
    from longqa.generate.run import out_files_problems

    return out_files_problems(cfg)


COMMAND = Command("python -m longqa.generate", __doc__, GenerateConfig, paths=generate_problems)


def summary_lines(s: dict) -> str:
    r, t = s["requests"], s["totals"]
    rejected = ", ".join(f"{k} {v}" for k, v in s["rejected"].items()) or "none"
    failed = ", ".join(f"{k} {v}" for k, v in s["failed"].items()) or "none"
    return "\n".join([
        f"this run: {s['written']} pairs written, rejected: {rejected}; failed: {failed}"
        + (f" ({s['not_retried']} refused by the server, not retried)" if s["not_retried"] else ""),
        f"requests: {r['calls']} calls, {r['http_attempts']} HTTP attempts (statuses {r['statuses']}, "
        f"{r['no_reply']} without reply), tokens in {r['tokens_in']} / out {r['tokens_out']}, {s['seconds']} s",
        f"{s['out']}: {t['pairs']} pairs in qa.jsonl, {sum(t['rejected'].values())} in rejects.jsonl, "
        f"{t['open']} of {t['slots']} questions still open"])


def generate(cfg: GenerateConfig, options: Options) -> int:
    from longqa.generate.run import generate as run  # the openai client loads only when a run starts

    summary = run(cfg, progress=options.progress)
    log.info(summary_lines(summary))
    failed = sum(summary["failed"].values())
    if summary["not_retried"]:
        log.error("the server refused %d requests with a 4xx that is not retried (the warnings above say why): "
                  "a rerun asks them again and is refused alike until that is fixed", summary["not_retried"])
    if failed > summary["not_retried"]:
        log.error("%d requests failed after their retries; rerun the same command to ask them again",
                  failed - summary["not_retried"])
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line a request otherwise
    return COMMAND.main(argv, generate)


if __name__ == "__main__":
    sys.exit(main())
