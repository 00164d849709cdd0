#!/usr/bin/env python3
"""Bounded load test of a running `pixellm serve` (loopback only; Python stdlib only).

    scripts/serve-load-test.py --url http://127.0.0.1:8080 --image examples/shapes.png \
        --prompt "Please segment the red circle and the blue star." \
        --requests 64 --clients 8 --time-limit 300

Sends exactly --requests POST /v1/chat/completions from --clients threads, stops sending at
--time-limit seconds, and prints one JSON line: sent, answered (200), refused (429), other
(any other status or a transport error: must be 0), wall seconds, answers/s and the latency
percentiles of the answered requests. Exit 1 when a request was lost or failed otherwise.
"""
import argparse
import base64
import concurrent.futures as cf
import json
import sys
import time
import urllib.error
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--image", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--time-limit", type=float, default=300)
    a = ap.parse_args()
    uri = "data:image/png;base64," + base64.b64encode(open(a.image, "rb").read()).decode()
    body = json.dumps({
        "model": "pixellm",
        "max_tokens": a.max_tokens,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": a.prompt},
            {"type": "image_url", "image_url": {"url": uri}},
        ]}],
    }).encode()
    start = time.monotonic()

    def one(_):
        if time.monotonic() - start > a.time_limit:
            return ("not sent", 0.0)
        t = time.monotonic()
        req = urllib.request.Request(a.url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=a.time_limit) as r:
                r.read()
                return (r.status, time.monotonic() - t)
        except urllib.error.HTTPError as e:
            return (e.code, time.monotonic() - t)
        except Exception as e:  # a lost request: reported, fails the run
            return (f"error: {e}", time.monotonic() - t)

    with cf.ThreadPoolExecutor(a.clients) as pool:
        results = list(pool.map(one, range(a.requests)))
    wall = time.monotonic() - start
    sent = [r for r in results if r[0] != "not sent"]
    ok = sorted(t for s, t in sent if s == 200)
    refused = sum(1 for s, _ in sent if s == 429)
    other = [s for s, _ in sent if s not in (200, 429)]

    def pct(p):
        return round(ok[min(len(ok) - 1, int(p / 100 * len(ok)))] * 1e3) if ok else None

    print(json.dumps({
        "sent": len(sent), "answered": len(ok), "refused_429": refused, "other": other,
        "wall_s": round(wall, 1), "answers_per_s": round(len(ok) / wall, 2),
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100)},
    }))
    sys.exit(1 if other else 0)


if __name__ == "__main__":
    main()
