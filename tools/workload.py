"""A bounded, reproducible client workload for a vLLM server on loopback.

Sends streaming ``/v1/completions`` requests at temperature 0 with a mix of prompt lengths and
output lengths, at most ``concurrency`` at a time, and records for every request what the client
saw: the id it chose (sent as ``X-Request-Id``, so the server's external request id is
``cmpl-<id>-0``), the ``usage`` the server returned, the generated text, time to first token
(first streamed text chunk) and end-to-end latency, both measured at the client.

Command line::

    python tools/workload.py --url http://127.0.0.1:8000 --requests 32 --concurrency 8 --out r.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import aiohttp

_WORDS = (
    "ka ri to ne sa mu lo pe vi da ko shi ta ru me no ha zu gi be ya fu wo se mi an el or is um "
    "ter ven dor pal sin qua lex mon tri fel gor nix"
).split()


@dataclasses.dataclass
class RequestSpec:
    request_id: str
    prompt: str
    max_tokens: int
    ignore_eos: bool = True
    traceparent: Optional[str] = None
    stop: Optional[Sequence[str]] = None  # stop strings (the API server's detokenizer checks them)
    n: int = 1  # completions of the one prompt (vLLM V1 runs them as child requests)
    temperature: float = 0.0  # greedy; n > 1 needs sampling
    chat: bool = False  # /v1/chat/completions (the prompt as one user message)

    @property
    def external_rid(self) -> str:
        """vLLM's API-server id for this request: ``cmpl-<X-Request-Id>-<prompt index>``, or
        ``chatcmpl-<X-Request-Id>`` for a chat request."""
        return f"chatcmpl-{self.request_id}" if self.chat else f"cmpl-{self.request_id}-0"


@dataclasses.dataclass
class RequestResult:
    request_id: str
    external_rid: str
    ok: bool
    status: int = 0
    error: str = ""
    prompt_tokens: int = -1
    completion_tokens: int = -1
    text: str = ""
    start_unix: float = 0.0
    ttft_s: float = -1.0
    latency_s: float = -1.0
    traceparent: Optional[str] = None


def make_requests(
    count: int,
    *,
    seed: int = 0,
    prompt_words: Sequence[int] = (4, 16, 40, 64),
    output_tokens: Sequence[int] = (4, 16, 32, 64),
    ignore_eos: bool = True,
    id_prefix: str = "wl",
    traceparent: bool = False,
    chat_every: int = 0,
) -> list:
    """``count`` requests cycling through every prompt/output length pair, deterministically;
    with ``chat_every`` k, every k-th one (from the second) a chat request."""
    rng = random.Random(seed)
    run_tag = f"{rng.getrandbits(32):08x}"
    specs = []
    for index in range(count):
        words = prompt_words[index % len(prompt_words)]
        tokens = output_tokens[(index // len(prompt_words)) % len(output_tokens)]
        prompt = " ".join(rng.choice(_WORDS) + rng.choice(_WORDS) for _ in range(words))
        parent = None
        if traceparent:
            parent = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
        specs.append(RequestSpec(f"{id_prefix}{run_tag}{index:05d}", prompt, tokens,
                                 ignore_eos, parent,
                                 chat=chat_every > 0 and index % chat_every == chat_every - 1))
    return specs


async def _one(session: aiohttp.ClientSession, url: str, model: str, spec: RequestSpec,
               timeout_s: float) -> RequestResult:
    result = RequestResult(spec.request_id, spec.external_rid, ok=False,
                           traceparent=spec.traceparent)
    body = {
        "model": model, "max_tokens": spec.max_tokens,
        "temperature": spec.temperature, "stream": True, "stream_options": {"include_usage": True},
        "ignore_eos": spec.ignore_eos,
    }
    if spec.chat:
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        body["prompt"] = spec.prompt
    if spec.stop:
        body["stop"] = list(spec.stop)
    if spec.n > 1:
        body["n"] = spec.n
    headers = {"X-Request-Id": spec.request_id}
    if spec.traceparent:
        headers["traceparent"] = spec.traceparent
    result.start_unix = time.time()
    start = time.perf_counter()
    pieces = []
    try:
        path = "/v1/chat/completions" if spec.chat else "/v1/completions"
        async with session.post(url + path, json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            result.status = response.status
            if response.status != 200:
                result.error = (await response.text())[:500]
                return result
            async for raw_line in response.content:
                line = raw_line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content") if spec.chat \
                        else choice.get("text")
                    if text and result.ttft_s < 0:
                        result.ttft_s = time.perf_counter() - start
                    pieces.append(text or "")
                usage = chunk.get("usage")
                if usage:
                    result.prompt_tokens = usage["prompt_tokens"]
                    result.completion_tokens = usage["completion_tokens"]
        result.latency_s = time.perf_counter() - start
        result.text = "".join(pieces)
        result.ok = result.completion_tokens >= 0
        if not result.ok:
            result.error = "stream ended without usage"
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
        result.error = f"{type(error).__name__}: {error}"
    return result


async def run_async(url: str, model: str, specs: Iterable[RequestSpec], concurrency: int = 8,
                    timeout_s: float = 300.0) -> list:
    specs = list(specs)
    queue: asyncio.Queue = asyncio.Queue()
    for index, spec in enumerate(specs):
        queue.put_nowait((index, spec))
    results: list = [None] * len(specs)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            while True:
                try:
                    index, spec = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results[index] = await _one(session, url, model, spec, timeout_s)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return results


def run(url: str, model: str, specs: Iterable[RequestSpec], concurrency: int = 8,
        timeout_s: float = 300.0) -> list:
    """Send every request (at most ``concurrency`` in flight); results in ``specs`` order."""
    return asyncio.run(run_async(url, model, specs, concurrency, timeout_s))


def _percentile(values: list, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(results: Sequence[RequestResult], wall_s: float) -> dict:
    """Throughput and latency figures of one workload run (times in ms)."""
    done = [r for r in results if r.ok]
    ttft = [r.ttft_s * 1000 for r in done if r.ttft_s >= 0]
    e2e = [r.latency_s * 1000 for r in done]
    output_tokens = sum(r.completion_tokens for r in done)
    return {
        "requests": len(results),
        "failed": len(results) - len(done),
        "wall_s": wall_s,
        "output_tokens": output_tokens,
        "output_tok_per_s": output_tokens / wall_s if wall_s > 0 else float("nan"),
        "ttft_p50_ms": _percentile(ttft, 0.5),
        "ttft_p99_ms": _percentile(ttft, 0.99),
        "e2e_p50_ms": _percentile(e2e, 0.5),
        "e2e_p99_ms": _percentile(e2e, 0.99),
        "e2e_mean_ms": statistics.fmean(e2e) if e2e else float("nan"),
    }


def save(results: Sequence[RequestResult], path: Path) -> None:
    path.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="Send a bounded completion workload.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    specs = make_requests(args.requests, seed=args.seed)
    started = time.perf_counter()
    results = run(args.url, args.model, specs, args.concurrency)
    figures = summarize(results, time.perf_counter() - started)
    print(json.dumps(figures, indent=1))
    if args.out:
        save(results, args.out)
    for failed in [r for r in results if not r.ok][:5]:
        print(f"failed {failed.request_id}: {failed.status} {failed.error}", file=sys.stderr)
    return 0 if figures["failed"] == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
