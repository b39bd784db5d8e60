"""Run the tokenize stage on `num_proc` workers, keeping batch order.

The workers are threads of this process. The Rust tokenizer releases the GIL and already spreads each batch over
every core, so worker *processes* gain nothing on the tokenizer's side (the tokenizers library even switches its threads
off in forked workers) and each costs a start-up with its own copy of the tokenizer; measured in
`benchmarks/build_throughput.py`. Threads let tokenization of the next batches overlap the reading, rendering and
writing of this one, at no start-up cost, so whatever `--num-proc` a user picks, all cores are used once (at most one
worker a core).
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

from longqa.tokenize import Encoder


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def encode_batches(batches: Iterable[list], tokenizer, cfg) -> Iterator[tuple[list, list]]:
    """Yield (batch, encoded) in input order; `batch` items have `.rendered` and `.doc_id`."""
    encoder = Encoder(tokenizer, cfg.max_length, cfg.truncation)

    def encode(batch: list) -> list:
        return encoder.encode([p.rendered for p in batch], [p.doc_id for p in batch])

    # Even one worker runs beside this thread, so tokenizing overlaps reading, rendering and writing. More workers
    # than cores only crowd the tokenizer's own threads (measured: 4 workers on 2 cores ran 16% slower).
    workers = min(cfg.num_proc, available_cores())
    with ThreadPoolExecutor(workers, thread_name_prefix="longqa-tokenize") as pool:
        window: deque = deque()  # bounded read-ahead keeps memory flat
        for batch in batches:
            window.append((batch, pool.submit(encode, batch)))
            if len(window) >= 2 * workers + 1:
                done, future = window.popleft()
                yield done, future.result()
        while window:
            done, future = window.popleft()
            yield done, future.result()
