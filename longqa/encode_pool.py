"""Run the tokenize stage in this process or in `num_proc` worker processes, keeping batch order.

The fast tokenizer already uses every core through its own threads; worker processes would each get a single thread
(the tokenizers library switches its threads off after a fork), so with `num_proc` > 1 the workers are *spawned* and
each is given `cores // num_proc` tokenizer threads: whatever `--num-proc` a user picks, all cores are used once.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Iterator

from longqa.tokenize import Encoder

_worker_encoder: Encoder | None = None


def _init_worker(tokenizer_bytes: bytes, max_length: int, truncation: str, threads: int) -> None:
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # read when the tokenizers thread pool first starts
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    global _worker_encoder
    _worker_encoder = Encoder(pickle.loads(tokenizer_bytes), max_length, truncation)


def _encode_in_worker(job):
    samples, keys = job
    return _worker_encoder.encode(samples, keys)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def encode_batches(batches: Iterable[list], tokenizer, cfg) -> Iterator[tuple[list, list]]:
    """Yield (batch, encoded) in input order; `batch` items have `.rendered` and `.doc_id`."""
    if cfg.num_proc == 1:
        encoder = Encoder(tokenizer, cfg.max_length, cfg.truncation)
        for batch in batches:
            yield batch, encoder.encode([p.rendered for p in batch], [p.doc_id for p in batch])
        return
    threads = max(1, available_cores() // cfg.num_proc)
    init = (pickle.dumps(tokenizer), cfg.max_length, cfg.truncation, threads)
    with ProcessPoolExecutor(cfg.num_proc, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=init) as pool:
        window: deque = deque()  # bounded read-ahead keeps memory flat
        for batch in batches:
            window.append((batch, pool.submit(_encode_in_worker, ([p.rendered for p in batch],
                                                                 [p.doc_id for p in batch]))))
            if len(window) >= 2 * cfg.num_proc:
                done, future = window.popleft()
                yield done, future.result()
        while window:
            done, future = window.popleft()
            yield done, future.result()
