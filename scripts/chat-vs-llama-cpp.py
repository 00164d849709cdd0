#!/usr/bin/env python3
"""Decode speed of `pixellm chat` and llama.cpp on the same GGUF file, side by side.

Both decode greedily from the same ChatML conversation; llama.cpp runs in this process
(llama-cpp-python, see scripts/setup-llama-cpp.sh) with the same thread count, pixellm as
a subprocess (its closing line reports decode tokens/s, prompt excluded). The runs
alternate round by round so that a noisy machine hits both alike; the table gives the
median and range per engine and the ratio of medians.

Usage (the venv's Python):
  ~/.cache/pixellm/llama-venv/bin/python scripts/chat-vs-llama-cpp.py \
      --gguf SmolLM2-135M-Instruct.Q4_1.gguf --pixellm target/release/pixellm \
      [--quant stored,q8,q4,none] [--rounds 3] [--tokens 200] [--threads 2] [--json FILE]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import time

PROMPT = "Write a long story about a dragon who learns to cook."


def llama_cpp_rate(llm, tokens):
    msgs = [{"role": "user", "content": PROMPT}]
    first, n = None, 0
    for _ in llm.create_chat_completion(
        messages=msgs, max_tokens=tokens, temperature=0.0, top_k=1, stream=True
    ):
        if first is None:
            first = time.perf_counter()
        n += 1
    end = time.perf_counter()
    # Stream chunks: a role header, one per token, a final stop chunk.
    return max(n - 2, 1) / (end - first)


def pixellm_rate(binary, gguf, quant, tokens, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [binary, "chat", "--model", gguf, "--max-new-tokens", str(tokens)]
    if quant != "stored":
        cmd += ["--quant", quant]
    out = subprocess.run(cmd + [PROMPT], capture_output=True, text=True, env=env, check=True)
    m = re.search(r"(\d+) tokens at ([0-9.]+) tokens/s", out.stderr)
    w = re.search(r"\(([0-9.]+) MB of weights\)", out.stderr)
    return float(m.group(2)), int(m.group(1)), float(w.group(1)) if w else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--pixellm", default="target/release/pixellm")
    ap.add_argument("--quant", default="stored,none")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json")
    a = ap.parse_args()

    from llama_cpp import Llama, __version__

    llm = Llama(model_path=a.gguf, n_threads=a.threads, n_ctx=2048, verbose=False, seed=0)
    llama_cpp_rate(llm, 8)  # warm-up
    quants = a.quant.split(",")
    rates = {"llama.cpp": []}
    weights = {}
    for q in quants:
        rates[f"pixellm --quant {q}"] = []
    for r in range(a.rounds):
        rates["llama.cpp"].append(llama_cpp_rate(llm, a.tokens))
        for q in quants:
            rate, n, mb = pixellm_rate(a.pixellm, a.gguf, q, a.tokens, a.threads)
            rates[f"pixellm --quant {q}"].append(rate)
            weights[q] = mb
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
    base = statistics.median(rates["llama.cpp"])
    print(f"\n{os.path.basename(a.gguf)}, {a.threads} threads, {a.tokens} tokens, llama-cpp-python {__version__}")
    print(f"| engine | weights MB | decode tokens/s (median, range) | vs llama.cpp |")
    print(f"|---|---:|---:|---:|")
    rows = []
    for k, v in rates.items():
        med = statistics.median(v)
        q = k.split()[-1] if k != "llama.cpp" else None
        mb = weights.get(q) if q else None
        print(f"| {k} | {mb if mb is not None else '—'} | {med:.1f} ({min(v):.1f}–{max(v):.1f}) | {med / base:.2f}× |")
        rows.append({"engine": k, "weights_mb": mb, "median": med, "samples": v, "ratio": med / base})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"gguf": a.gguf, "threads": a.threads, "tokens": a.tokens, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
