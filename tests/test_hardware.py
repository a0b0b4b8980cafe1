"""The processor facts and the `auto` dtype: the environment decides, never a hidden default."""
import pytest

from gen_linker.errors import GenLinkerError
from gen_linker.hardware import cpu_info, default_dtype, machine_line, resolve_dtype


def test_gen_linker_dtype_overrides_auto_but_not_an_explicit_dtype(monkeypatch):
    monkeypatch.setenv("GEN_LINKER_DTYPE", "bfloat16")
    assert default_dtype() == "bfloat16" and resolve_dtype("auto") == "bfloat16"
    assert resolve_dtype("float32") == "float32"              # the caller's choice wins
    monkeypatch.setenv("GEN_LINKER_DTYPE", "float32")
    assert resolve_dtype(None) == "float32"
    monkeypatch.setenv("GEN_LINKER_DTYPE", "fp8")
    with pytest.raises(GenLinkerError, match="GEN_LINKER_DTYPE='fp8'.*float32, bfloat16"):
        default_dtype()
    with pytest.raises(GenLinkerError, match="unknown dtype 'int4'"):
        resolve_dtype("int4")


def test_auto_is_bfloat16_only_where_amx_runs_it(monkeypatch):
    monkeypatch.delenv("GEN_LINKER_DTYPE", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert default_dtype("cuda") == "bfloat16"
    assert default_dtype() == ("bfloat16" if cpu_info().amx else "float32")
    # A oneDNN cap hides what it names above it: the machine is then treated as the CPU it emulates.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    info = cpu_info()
    assert not info.amx and info.bf16_kind in ("avx512_bf16", "none") and default_dtype() == "float32"
    # measured: bf16 pays off there on vLLM only (1.18x), and not at all without bf16 instructions
    assert default_dtype(backend="vllm") == ("bfloat16" if info.bf16_kind == "avx512_bf16" else "float32")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_info().bf16_kind == "none" and default_dtype() == default_dtype(backend="vllm") == "float32"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in cpu_info().line()


def test_machine_line_names_vendor_model_and_bf16_path():
    info = cpu_info()
    line = machine_line()
    assert info.vendor in line and info.model in line and f"bf16 matmuls: {info.bf16_kind}" in line
    assert "dtype auto = " in line and "(sentence encoders, on mentions)" in line
