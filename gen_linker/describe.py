"""LLM-written entity descriptions (DIM's "dynamic" entity representations).

For each KB entity, ask a chat LLM behind any OpenAI-compatible endpoint (ChatGPT with the
user's key, or a local vLLM server, which `serve()` starts with the packaged model) with the
prompt of `prompts/dim_describe.yaml`. Requests run concurrently under a rate limit; server
errors, rate-limit answers and dropped connections are retried with exponential back-off.
Every answer is appended to an on-disk cache keyed by (entity id, model, prompt), flushed at
once, so a rerun costs nothing and a killed run resumes where it stopped. The result is a
descriptions JSONL (`{"id", "description"}`) that `--descriptions` puts in place of the KB's.

Only the standard library speaks HTTP here: a JSON POST needs no client package.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from .batch import completed_ids
from .errors import GenLinkerError
from .prompting import find_template
from .schema import Entity

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class DescribeConfig:
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-3.5-turbo"
    api_key: str | None = None
    prompt: str = "dim_describe"
    concurrency: int = 8
    rate_limit: float | None = None      # requests per second, all threads together
    retries: int = 5
    backoff: float = 1.0                 # seconds before the first retry; doubled each time
    timeout: float = 120.0
    temperature: float = 0.0


@dataclass
class DescribeSummary:
    written: int = 0
    cached: int = 0
    requested: int = 0
    retries: int = 0
    failed: dict[str, str] = field(default_factory=dict)   # entity id -> why

    def line(self) -> str:
        return (f"{self.written} descriptions written ({self.cached} from the cache, {self.requested} requested, "
                f"{self.retries} retries), {len(self.failed)} failed")


class DescribePrompt:
    """The `kind: describe` template: chat messages for one entity."""

    def __init__(self, name: str = "dim_describe") -> None:
        path = find_template(name)
        data = yaml.safe_load(path.read_text())
        if data.get("kind") != "describe" or "user" not in data:
            raise GenLinkerError(f"prompt {path} is not a describe prompt (needs kind: describe and user)")
        self.system, self.user = data.get("system"), data["user"]
        self.max_tokens = int(data.get("max_tokens", 96))
        self.text = json.dumps(data, sort_keys=True)      # what the cache key remembers

    def messages(self, entity: Entity) -> list[dict]:
        user = self.user.format(name=entity.name, facts=entity.description or "none")
        return ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": user}]


class DescriptionCache:
    """Append-only JSONL of answers keyed by (entity id, model, prompt); a torn last line (a
    kill mid-write) is cut off on opening, and that entity asked again."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, str] = {}
        if self.path.exists():
            completed_ids(self.path)   # cut a torn last line, so the next answer starts a line of its own
            with self.path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.entries[rec["key"]] = rec["description"]
                    except (ValueError, KeyError, TypeError):
                        continue
        self._lock = threading.Lock()

    @staticmethod
    def key(entity_id: str, model: str, prompt_text: str) -> str:
        return hashlib.sha256("\x1f".join((entity_id, model, prompt_text)).encode()).hexdigest()[:32]

    def add(self, key: str, entity_id: str, description: str) -> None:
        with self._lock:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "id": entity_id, "description": description}, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.entries[key] = description


class RateLimiter:
    """At most `rate` request starts per second across threads (None: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next_at)
            self.next_at = at + self.interval
        time.sleep(max(0.0, at - now))


class ChatClient:
    """POST /chat/completions with retries and back-off."""

    def __init__(self, config: DescribeConfig, limiter: RateLimiter, summary: DescribeSummary) -> None:
        self.config, self.limiter, self.summary = config, limiter, summary
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._lock = threading.Lock()

    def complete(self, messages: list[dict], max_tokens: int) -> str:
        c = self.config
        body = json.dumps({"model": c.model, "messages": messages, "max_tokens": max_tokens,
                           "temperature": c.temperature}).encode()
        headers = {"Content-Type": "application/json"}
        if c.api_key:
            headers["Authorization"] = f"Bearer {c.api_key}"
        for attempt in range(c.retries + 1):
            self.limiter.wait()
            try:
                with urllib.request.urlopen(urllib.request.Request(self.url, body, headers), timeout=c.timeout) as r:
                    data = json.loads(r.read())
                text = (data["choices"][0]["message"]["content"] or "").strip()
                if not text:
                    raise GenLinkerError("the LLM returned an empty description")
                return text
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode(errors="replace")
                if e.code not in RETRY_STATUS or attempt == c.retries:
                    raise GenLinkerError(f"{self.url} answered HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, socket.timeout) as e:
                if attempt == c.retries:
                    raise GenLinkerError(f"{self.url} could not be reached: {e}") from None
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise GenLinkerError(f"{self.url} gave an unexpected answer: {e}") from None
            with self._lock:
                self.summary.retries += 1
            time.sleep(c.backoff * 2**attempt * (1 + 0.1 * random.random()))
        raise AssertionError("unreachable")


def describe(entities: Iterable[Entity], config: DescribeConfig, cache_path: str | Path, output: str | Path,
             progress: bool = True) -> DescribeSummary:
    """Describe every entity (cached ones cost nothing) and write `output` in KB order."""
    from tqdm import tqdm

    entities = list(entities)
    prompt = DescribePrompt(config.prompt)
    cache, keys, todo, summary = _pending(entities, config.model, prompt, cache_path)
    client = ChatClient(config, RateLimiter(config.rate_limit), summary)
    bar = tqdm(total=len(entities), initial=summary.cached, desc="describing", unit="entity", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, config.concurrency)) as pool:
        futures = {pool.submit(client.complete, prompt.messages(e), prompt.max_tokens): e for e in todo}
        for fut in as_completed(futures):
            e = futures[fut]
            summary.requested += 1
            try:
                cache.add(keys[e.id], e.id, fut.result())
            except GenLinkerError as err:
                summary.failed[e.id] = str(err)
            bar.update(1)
    bar.close()
    summary.written = _write_descriptions(entities, keys, cache, output)
    return summary


def describe_in_process(entities: Iterable[Entity], cache_path: str | Path, output: str | Path,
                        llm: str | None = None, prompt: str = "dim_describe", batch_size: int = 512,
                        progress: bool = True, backend=None) -> DescribeSummary:
    """`describe` without a server: a vLLM engine in this process (bf16 where the CPU has
    AMX), batches of `batch_size` chats. Much faster on a CPU than the HTTP path, which is
    bounded by the server's concurrency; same cache (model key `inprocess:<LLM folder>`),
    same output, same resume."""
    from tqdm import tqdm

    from .backends import load_backend

    entities = list(entities)
    template = DescribePrompt(prompt)
    backend = backend or load_backend("vllm", llm)
    if not getattr(backend.tokenizer, "chat_template", None):
        raise GenLinkerError(f"the LLM at {backend.path} has no chat template: describe needs a chat model")
    cache, keys, todo, summary = _pending(entities, f"inprocess:{backend.path}", template, cache_path)
    bar = tqdm(total=len(entities), initial=summary.cached, desc="describing", unit="entity", disable=not progress)
    tok = backend.tokenizer
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        prompts = [tok.apply_chat_template(template.messages(e), add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"] for e in batch]
        for e, text in zip(batch, backend.generate_text(prompts, template.max_tokens)):
            summary.requested += 1
            if text:
                cache.add(keys[e.id], e.id, text)
            else:
                summary.failed[e.id] = "the LLM returned an empty description"
        bar.update(len(batch))
    bar.close()
    summary.written = _write_descriptions(entities, keys, cache, output)
    return summary


def _pending(entities: Sequence[Entity], model: str, prompt: DescribePrompt, cache_path: str | Path):
    """(cache, cache key per entity id, entities the cache lacks, summary counting the cached)."""
    if not entities:
        raise GenLinkerError("the KB is empty: there is nothing to describe")
    cache = DescriptionCache(cache_path)
    keys = {e.id: DescriptionCache.key(e.id, model, prompt.text) for e in entities}
    todo = [e for e in entities if keys[e.id] not in cache.entries]
    return cache, keys, todo, DescribeSummary(cached=len(entities) - len(todo))


def _write_descriptions(entities: Sequence[Entity], keys: dict[str, str], cache: DescriptionCache,
                        output: str | Path) -> int:
    """The descriptions JSONL in KB order (atomic); returns how many were written."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for e in entities:
            text = cache.entries.get(keys[e.id])
            if text is not None:
                f.write(json.dumps({"id": e.id, "description": text}, ensure_ascii=False) + "\n")
                n += 1
    tmp.replace(output)
    return n


# ------------------------------------------------------------------------------ local server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """vLLM's OpenAI-compatible server on loopback, started as a subprocess; a context manager.
    `base_url` is what `DescribeConfig.base_url` takes."""

    def __init__(self, model: str | None = None, *, name: str = "local", port: int | None = None,
                 extra_args: Iterable[str] = (), start_timeout: float = 600.0, log: str | Path | None = None) -> None:
        from transformers import AutoConfig

        from .backends.vllm import cpu_only
        from .models import resolve_llm

        self.model_path, self.name = resolve_llm(model), name
        self.port = port or free_port()
        limit = getattr(AutoConfig.from_pretrained(self.model_path), "max_position_embeddings", None) or 2048
        max_len = min(2048, int(limit))   # a description prompt is short
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        # On a CPU, float32: a bf16 engine needs the AMX permission in its own process (see
        # backends/vllm.request_amx), which a server we only start cannot ask for.
        cpu = ["--dtype", "float32", "--kv-cache-memory-bytes", str(1 << 30)] if cpu_only() else []
        self.args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_path,
                     *cpu, "--served-model-name", name, "--host", "127.0.0.1", "--port", str(self.port),
                     "--enforce-eager", "--max-model-len", str(max_len), *extra_args]
        self.start_timeout, self.log = start_timeout, log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LocalServer":
        env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1",
               "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.args, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GenLinkerError(f"the local vLLM server exited with {self.proc.returncode} while starting"
                                     + (f"; see {self.log}" if self.log else " (pass log= to see why)"))
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError):
                time.sleep(1.0)
        self.__exit__()
        raise GenLinkerError(f"the local vLLM server did not answer within {self.start_timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
