"""Load test of ``gpt2clf serve``: throughput and latency, micro-batching on against off.

For each batching mode it starts ``gpt2clf serve`` as a subprocess on a free loopback port,
waits for ``/readyz``, then for each concurrency (default 1, 8 and 32 clients) runs a
closed loop: every client sends one short text per request (``{"texts": [t], "top_k": 3}``)
and sends the next as soon as the answer arrives. A run stops after ``--requests`` answers
or ``--seconds`` seconds, whichever comes first, so the whole benchmark ends by itself.
It reports requests/s, p50/p95/p99 latency and errors (any non-200 answer or transport
error), and the server's mean batch size from ``/metrics``. With ``GPT2CLF_API_KEY`` set, the
server (which inherits it) requires the key and every request sends it, so the figures include
the key check.

Without ``--model-dir`` it builds a random model folder first: ``--shape gpt2-small``
(GPT-2 small's dimensions, 124M backbone parameters, 20 labels) or ``--shape tiny`` (the
test suite's 2-layer, 64-wide GPT-2: measures the server, not the model). Random weights
time the same as trained ones. Texts are short forum-style sentences (about 5 to 30 tokens).

Usage::

    python benchmarks/serve_load.py                          # GPT-2 small shape, 1/8/32 clients
    python benchmarks/serve_load.py --shape tiny --concurrency 32 --requests 5000 --seconds 300
    python benchmarks/serve_load.py --model-dir runs/20ng/model --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LABELS = ["alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
          "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles",
          "rec.sport.baseball", "rec.sport.hockey", "sci.crypt", "sci.electronics", "sci.med", "sci.space",
          "soc.religion.christian", "talk.politics.guns", "talk.politics.mideast", "talk.politics.misc",
          "talk.religion.misc"]
SENTENCES = [
    "My X server crashes when I resize an xterm.",
    "Does anyone know a good driver for this graphics card?",
    "The shuttle launch was delayed by weather again.",
    "For sale: a 1989 motorcycle helmet, barely used, best offer.",
    "Who won the hockey game last night?",
    "Is the clipper chip a threat to privacy?",
    "My doctor says the new medication has side effects.",
    "The Mac SE will not boot after I upgraded the memory.",
    "What resistor do I need for this LED circuit?",
    "Which windows manager supports virtual desktops?",
    "The pitcher threw a no-hitter in the ninth.",
    "Gun control laws differ widely between states.",
    "How do I format a floppy disk on DOS 6?",
    "The orbit of the probe decays faster than predicted.",
    "Encryption keys should never be escrowed by the government.",
    "I think the car needs a new transmission.",
    "Thanks in advance for any help.",
    "Please reply by email, I do not read this group often.",
]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def request_texts(count: int, seed: int = 0) -> list[str]:
    """Short texts of one to three sentences, reproducible."""
    rng = random.Random(seed)
    return [" ".join(rng.sample(SENTENCES, rng.randint(1, 3))) for _ in range(count)]


def build_model(shape: str, folder: Path) -> Path:
    """A random model folder of the given shape (random weights time like trained ones)."""
    import torch
    from transformers import GPT2Config, GPT2Model

    from gpt2clf.data.batching import load_tokenizer
    from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier

    torch.manual_seed(0)
    if shape == "gpt2-small":
        config, spec = GPT2Config(), ClassifierSpec(num_labels=20, label_names=LABELS, n_embed=768, n_heads=2,
                                                    n_blocks=2)
    else:
        config = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=256)
        spec = ClassifierSpec(num_labels=20, label_names=LABELS, n_embed=32, n_heads=2, n_blocks=1)
    GPT2Model(config).save_pretrained(folder / "backbone")
    tokenizer = load_tokenizer(str(SHARED / "gpt2-tokenizer"))
    model_dir = folder / "model"
    GPT2Classifier.from_backbone(str(folder / "backbone"), spec).save_pretrained(
        model_dir, tokenizer=tokenizer, extra={"config": {"max_length": 256}})
    return model_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, port: int, micro_batching: bool, args: argparse.Namespace) -> subprocess.Popen:
    command = [sys.executable, "-m", "gpt2clf.cli", "serve", str(model_dir), "--port", str(port), "--device", "cpu",
               "--max-wait-ms", str(args.max_wait_ms), "--max-batch-tokens", str(args.max_batch_tokens),
               # generous: a queue of 32 clients in front of an unbatched model is slow, not broken
               "--request-timeout-s", "300", "--max-queue", "1024"]
    if not micro_batching:
        command.append("--no-micro-batching")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError("server did not become ready within 300 s")


def auth_headers() -> dict[str, str]:
    """The bearer header when the server has a key (it inherits GPT2CLF_API_KEY from this process)."""
    key = os.environ.get("GPT2CLF_API_KEY", "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


def batch_stats(base: str) -> tuple[float, float]:
    """(model calls, texts in them) so far, from the server's /metrics."""
    text = httpx.get(f"{base}/metrics", headers=auth_headers(), timeout=10).text
    count = float(re.search(r"^gpt2clf_batch_texts_count (\S+)$", text, re.M).group(1))
    total = float(re.search(r"^gpt2clf_batch_texts_sum (\S+)$", text, re.M).group(1))
    return count, total


async def closed_loop(base: str, concurrency: int, max_requests: int, max_seconds: float,
                      texts: list[str]) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    started = time.perf_counter()
    deadline = started + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=600, headers=auth_headers()) as client:
        async def one_client() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                text = texts[issued % len(texts)]
                issued += 1
                sent = time.perf_counter()
                try:
                    response = await client.post("/v1/classify", json={"texts": [text], "top_k": 3})
                    if response.status_code != 200:
                        errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                        continue
                except httpx.HTTPError as err:
                    errors.append(f"{type(err).__name__}: {err}")
                    continue
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)

    def percentile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    return {"concurrency": concurrency, "requests": len(latencies) + len(errors), "ok": len(latencies),
            "errors": len(errors), "error_samples": errors[:3], "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 2), "p50_ms": round(percentile(0.50), 1),
            "p95_ms": round(percentile(0.95), 1), "p99_ms": round(percentile(0.99), 1),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a model folder (default: build a random one, see --shape)")
    parser.add_argument("--shape", choices=["gpt2-small", "tiny"], default="gpt2-small",
                        help="the random model to build without --model-dir (default: gpt2-small)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--modes", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--requests", type=int, default=2000, help="answers per run at most (default: 2000)")
    parser.add_argument("--seconds", type=float, default=60, help="seconds per run at most (default: 60)")
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gpt2clf-serve-load-") as scratch:
        model_dir = args.model_dir or build_model(args.shape, Path(scratch))
        texts = request_texts(1000)
        results = []
        for mode in args.modes:
            port = free_port()
            log(f"starting gpt2clf serve (micro-batching {mode}) on port {port}")
            server = start_server(model_dir, port, mode == "on", args)
            base = f"http://127.0.0.1:{port}"
            try:
                for concurrency in args.concurrency:
                    calls_before, texts_before = batch_stats(base)
                    run = asyncio.run(closed_loop(base, concurrency, args.requests, args.seconds, texts))
                    calls, batched = batch_stats(base)
                    run["micro_batching"] = mode
                    run["mean_batch_texts"] = round((batched - texts_before) / max(1.0, calls - calls_before), 2)
                    results.append(run)
                    log(f"{mode:>3} x{concurrency:<3} {run['requests_per_s']:8.2f} req/s  p50 {run['p50_ms']} ms  "
                        f"p95 {run['p95_ms']} ms  p99 {run['p99_ms']} ms  errors {run['errors']}  "
                        f"({run['requests']} requests in {run['seconds']} s, mean batch {run['mean_batch_texts']})")
            finally:
                server.terminate()
                code = server.wait(120)
                log(f"server exited with {code}")
    summary = {"model": str(args.model_dir) if args.model_dir else f"random {args.shape}", "runs": results,
               "total_requests": sum(r["requests"] for r in results),
               "total_errors": sum(r["errors"] for r in results)}
    by_key = {(r["micro_batching"], r["concurrency"]): r for r in results}
    for concurrency in args.concurrency:
        on, off = by_key.get(("on", concurrency)), by_key.get(("off", concurrency))
        if on and off and off["requests_per_s"]:
            summary[f"speedup_at_{concurrency}"] = round(on["requests_per_s"] / off["requests_per_s"], 2)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{'batching':>8} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'batch':>6} {'requests':>8} {'errors':>6}")
        for r in results:
            print(f"{r['micro_batching']:>8} {r['concurrency']:>7} {r['requests_per_s']:>8.2f} {r['p50_ms']:>8} "
                  f"{r['p95_ms']:>8} {r['p99_ms']:>8} {r['mean_batch_texts']:>6} {r['requests']:>8} {r['errors']:>6}")
        print({k: v for k, v in summary.items() if k != "runs"})
    return 0 if summary["total_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
