"""Evaluation of long-context models (`python -m sft.eval`): one module per task, plus the shared pieces.

- :mod:`sft.evaluation.metrics` — LongBench QA scoring (token F1, ROUGE-L, exact match) and length buckets.
- :mod:`sft.evaluation.tasks` — the task registry: name -> module with ``run(model, tokenizer, cfg, ctx)``.
- :mod:`sft.evaluation.generate` — greedy generation shared by the generating tasks: batching, shared prefixes.
- :mod:`sft.evaluation.qa` — held-out long QA: prompts, middle truncation, scores.
- :mod:`sft.evaluation.passkey` — passkey retrieval as in LongLoRA (Chen et al. 2023, Sec. 4.2).
- :mod:`sft.evaluation.ppl` — perplexity by context length (the paper's sliding window or HF's strided protocol).
- :mod:`sft.evaluation.report` — ``report.json``, ``report.md`` and the PNG plots, models as columns.

Importing this package imports neither torch nor transformers; the task runners do when they run.
"""
