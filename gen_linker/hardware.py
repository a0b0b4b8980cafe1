"""What the processor can do, and the dtype the LLM runs in when the user says `auto`.

bfloat16 is only worth it where the CPU multiplies it in hardware *and* that is fast enough
to beat float32 without costing accuracy; `eval/results/dtype.md` measured it per processor
kind (native AMX, AVX512-BF16 only, neither). What decides is what oneDNN (torch's and vLLM's
bf16 matmul library) will actually use: a CPU flag hidden by `ONEDNN_MAX_CPU_ISA` counts as
absent, so an Intel machine capped to `AVX512_CORE_BF16` behaves, and is treated, like an AMD
one without AMX.

`GEN_LINKER_DTYPE=float32|bfloat16` overrides the automatic choice everywhere `auto` is asked
for (the CLI's `--dtype auto`, `load_backend(..., dtype="auto")`): a whole test suite or
benchmark can be run in either dtype without editing it. An explicit dtype always wins.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache

DTYPES = ("float32", "bfloat16")
DTYPE_ENV = "GEN_LINKER_DTYPE"

# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA), weakest first; a cap hides everything after it.
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX",
                "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512",
                "AVX10_2_512_AMX_2", "DEFAULT", "ALL")
_BF16_FROM = _ONEDNN_ISAS.index("AVX512_CORE_BF16")
_AMX_FROM = _ONEDNN_ISAS.index("AVX10_1_512_AMX")


@dataclass(frozen=True)
class CPUInfo:
    """The processor as benchmarks and the dtype choice see it."""

    vendor: str            # GenuineIntel, AuthenticAMD, ... ("unknown" off Linux)
    model: str             # the model name /proc/cpuinfo gives
    amx: bool              # AMX bf16 tiles present and not hidden by ONEDNN_MAX_CPU_ISA
    avx512_bf16: bool      # AVX512-BF16 present and not hidden
    isa_cap: str | None    # ONEDNN_MAX_CPU_ISA, when set

    @property
    def bf16_kind(self) -> str:
        """How bf16 matmuls run here: "amx", "avx512_bf16" or "none" (emulated / converted)."""
        return "amx" if self.amx else "avx512_bf16" if self.avx512_bf16 else "none"

    def line(self) -> str:
        """One line for a results table, e.g. `GenuineIntel Intel(R) Xeon(R) Processor, bf16
        matmuls: amx`; the cap is named when one hides features."""
        cap = f", ONEDNN_MAX_CPU_ISA={self.isa_cap}" if self.isa_cap else ""
        return f"{self.vendor} {self.model}, bf16 matmuls: {self.bf16_kind}{cap}"


def _isa_allows(cap: str | None, first_index: int) -> bool:
    if not cap:
        return True
    cap = cap.strip().upper()
    if cap not in _ONEDNN_ISAS:      # oneDNN ignores a value it does not know
        return True
    return _ONEDNN_ISAS.index(cap) >= first_index


@lru_cache(maxsize=None)
def _read_cpuinfo() -> tuple[str, str, frozenset[str]]:
    vendor, model, flags = "unknown", platform.processor() or "unknown CPU", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and vendor == "unknown":
                    vendor = value.strip()
                elif key == "model name" and model in ("unknown CPU", platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if vendor != "unknown" and flags and model:
                    break
    except OSError:
        pass
    return vendor, model, flags


def cpu_info() -> CPUInfo:
    """The processor, with the oneDNN cap of this process's environment applied."""
    vendor, model, flags = _read_cpuinfo()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or None
    return CPUInfo(vendor=vendor, model=model,
                   amx="amx_bf16" in flags and _isa_allows(cap, _AMX_FROM),
                   avx512_bf16="avx512_bf16" in flags and _isa_allows(cap, _BF16_FROM),
                   isa_cap=cap)


def default_dtype(device: str = "cpu", backend: str = "hf") -> str:
    """The dtype `auto` means: `$GEN_LINKER_DTYPE` when set; bfloat16 on a GPU; on a CPU,
    bfloat16 only where it was measured both faster than float32 and not less accurate
    (eval/results/dtype.md, the Top-1 difference's 95% interval holding 0): with AMX on both
    backends (hf 1.84x, vLLM 4.7x); with AVX512-BF16 alone on vLLM only (1.18x; hf is 0.76x
    there); never without bf16 instructions (hf 0.21x, and vLLM's CPU build aborts)."""
    forced = os.environ.get(DTYPE_ENV, "").strip().lower()
    if forced and forced != "auto":
        if forced not in DTYPES:
            from .errors import GenLinkerError

            raise GenLinkerError(f"{DTYPE_ENV}={forced!r} is not a dtype: use one of {', '.join(DTYPES)} or auto")
        return forced
    if device != "cpu":
        return "bfloat16"
    kind = cpu_info().bf16_kind
    if kind == "amx" or (kind == "avx512_bf16" and backend == "vllm"):
        return "bfloat16"
    return "float32"


def resolve_dtype(dtype: str | None, device: str = "cpu", backend: str = "hf") -> str:
    """An explicit dtype as given; `auto` (or None) as `default_dtype` decides."""
    if dtype in (None, "auto"):
        return default_dtype(device, backend)
    if dtype not in DTYPES and dtype != "float16":
        from .errors import GenLinkerError

        raise GenLinkerError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return dtype


def machine_line() -> str:
    """One line for a results table: the processor (vendor, model, how bf16 matmuls run), cores,
    memory, torch and its threads, and what dtype `auto` means here (for the LLM backends and
    for the sentence encoders, `--encoder-dtype`), so that figures from different processors
    are never compared without saying so."""
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
            mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    try:
        import torch

        tv = f", torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        tv = ""
    hf = default_dtype()       # also what the sentence encoders' auto means
    return (f"{cpu_info().line()}, {os.cpu_count()} cores{mem}{tv}, {platform.system()} {platform.machine()}, "
            f"dtype auto = {hf} (hf), {default_dtype(backend='vllm')} (vllm), {hf} (sentence encoders, on mentions)")
