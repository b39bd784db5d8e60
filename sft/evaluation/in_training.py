"""Long-context evaluation during training (``eval_every: N`` in ``python -m sft.run``): every N optimizer steps, and
once before the first, the model in eval mode (dense attention, no S2-Attn) runs the chosen tasks on rank 0 and the
scores are logged through ``Trainer.log``, so they reach ``metrics.jsonl`` and the ``report_to`` tracker beside the
loss: the run's long-context curve, not only its loss.

Logged keys (one line per evaluation): ``longctx_passkey_<L>`` (accuracy %, the grid protocol at depth 0.5),
``longctx_ppl_<L>`` (sliding-window perplexity, one window), ``longctx_qa_f1`` (LongBench F1 % on the first
``eval_qa_questions`` held-out questions), ``longctx_seconds``. A resumed run keeps the lines up to its checkpoint
(``sft.train.truncate_metrics``) and continues the curve; the step-0 point is only measured by a fresh run.

Other ranks wait at their next collective while rank 0 evaluates (keep the tasks small next to the DDP timeout). Not
for sharded parameters (FSDP, DeepSpeed ZeRO-3): rank 0 alone cannot run the model there.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from transformers import TrainerCallback

from schemas.eval import PasskeyConfig, PPLConfig, QAConfig
from schemas.train import TrainConfig

log = logging.getLogger(__name__)


class LongContextEval(TrainerCallback):
    """Runs ``cfg.eval_tasks`` every ``cfg.eval_every`` steps on rank 0 and logs them with ``trainer.log``."""

    def __init__(self, cfg: TrainConfig, trainer):
        self.cfg, self.trainer = cfg, trainer
        self.passkey = PasskeyConfig(lengths=cfg.eval_passkey_lengths, depths=[0.5], trials=cfg.eval_passkey_trials,
                                     seed=cfg.seed)
        data = cfg.data_paths[0]
        self.ppl = PPLConfig(data=data, split=cfg.eval_split or "test", lengths=cfg.eval_ppl_lengths, max_windows=1)
        self.qa = QAConfig(data=data, split=cfg.eval_split or "test", limit=cfg.eval_qa_questions)
        self._data: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:  # a resumed run measured its start before (kept in metrics.jsonl)
            self._evaluate(state, control)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.cfg.eval_every == 0:
            self._evaluate(state, control)

    def _evaluate(self, state, control) -> None:
        if not state.is_world_process_zero:
            return
        model = self.trainer.model
        was_training = model.training
        model.eval()  # dense attention (S2-Attn is only used in train mode)
        try:  # the training's mixed precision (bfloat16 base weights need autocast next to float32 trainable ones)
            with self.trainer.accelerator.autocast():
                scores = self.scores(model, self.trainer.processing_class)
        finally:
            model.train(was_training)
        log.info("long-context eval at step %d: %s", state.global_step,
                 ", ".join(f"{k} {v}" for k, v in scores.items()))
        should_log = control.should_log  # Trainer.log clears it: the step's own loss line must still follow
        self.trainer.log(scores)
        control.should_log = should_log

    def scores(self, model, tokenizer) -> dict[str, float]:
        """One evaluation of every task in ``cfg.eval_tasks``: {metric: value}."""
        from sft.evaluation.passkey import evaluate_passkey
        from sft.evaluation.ppl import evaluate_ppl, load_texts
        from sft.evaluation.qa import evaluate_qa, load_examples
        from sft.model import context_length

        window = context_length(model.config)
        quiet = log.info
        started, scores = time.perf_counter(), {}
        for task in self.cfg.eval_tasks:
            if task == "passkey":
                result = evaluate_passkey(model, tokenizer, self.passkey, window=window, say=quiet)
                scores.update({f"longctx_passkey_{n}": r["accuracy"] for n, r in result["by_length"].items()})
            elif task == "ppl":
                if "ppl" not in self._data:
                    self._data["ppl"] = load_texts(self.ppl.data, split=self.ppl.split, max_documents=4)
                result = evaluate_ppl(model, tokenizer, self._data["ppl"], self.ppl, window=window, say=quiet)
                scores.update({f"longctx_ppl_{n}": r["ppl"] for n, r in result["by_length"].items()})
            elif task == "qa":
                if "qa" not in self._data:
                    self._data["qa"] = load_examples(self.qa.data, split=self.qa.split, limit=self.qa.limit)
                result = evaluate_qa(model, tokenizer, self._data["qa"], self.qa, window=window)
                scores["longctx_qa_f1"] = result["overall"]["f1"]
        scores["longctx_seconds"] = round(time.perf_counter() - started, 2)
        return scores


def add_long_context_eval(trainer, cfg: TrainConfig) -> None:
    """The hook ``sft.train`` calls: adds :class:`LongContextEval` when ``cfg.eval_every`` is set."""
    if cfg.eval_every is not None:
        trainer.add_callback(LongContextEval(cfg, trainer))
