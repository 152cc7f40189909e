from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cia_assets.config import CiaConfig
from cia_assets.lib.core.cpu import cpu_has_bf16_units
from cia_assets.lib.core.records import Chunk
from cia_assets.lib.indexing.embedding_models import (
    EmbeddingModel,
    PromotedAdapter,
    active_model,
    adapter_folder,
    model_by_id,
    write_promoted_adapter,
)
from cia_assets.lib.indexing.embeddings import (
    ADAPTER_RECORD,
    BULK_MIN_TEXTS,
    PACKAGED_MODEL,
    Embedder,
    EmbeddingCache,
    EmbeddingModelError,
    choose_precision,
    packaged_model_source,
)
from cia_assets.lib.indexing.pipeline import ensure_embeddings

TEXTS = [
    "def check_permission(user, action):\n    return action in user.grants",
    "class TokenValidator:\n    pass",
    "a much longer text " * 40,
]


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> Embedder:
    return Embedder(PACKAGED_MODEL, model_dir, threads=2)


def test_onnx_export_matches_the_torch_model(embedder: Embedder) -> None:
    """The exported ONNX model (run by fastembed) gives sentence-transformers' embedding:
    mean pooling over tokens, L2-normalized, truncated at 256 tokens."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    source = packaged_model_source()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    ours = embedder.embed(TEXTS)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose((ours * reference).sum(axis=1), 1.0, atol=1e-4)


def test_truncates_at_256_tokens(embedder: Embedder) -> None:
    at_limit = embedder.embed([" ".join(["token"] * 254)])[0]
    beyond = embedder.embed([" ".join(["token"] * 600)])[0]
    assert float(at_limit @ beyond) > 0.9999


def test_model_folder_without_onnx_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError, match=f"{tmp_path} has no model.onnx"):
        Embedder(PACKAGED_MODEL, tmp_path)


def _code_chunks(count: int) -> list[str]:
    """Real code of this package, cut as the indexer cuts it (function and class chunks)."""
    from cia_assets.lib.indexing.chunking.dispatch import chunk_file

    root = Path(__file__).resolve().parents[2] / "cia_assets" / "lib"
    texts: list[str] = []
    for path in sorted(root.rglob("*.py")):
        texts += [f"{path.name}\n{draft.text}" for draft in chunk_file(path.name, path.read_bytes())]
    return texts[:count]


@pytest.fixture(scope="module")
def bf16_embedder(model_dir: Path) -> Embedder:
    return Embedder(PACKAGED_MODEL, model_dir, threads=2, precision="bf16")


def test_bf16_bulk_engine_gives_the_fp32_vectors(embedder: Embedder, bf16_embedder: Embedder) -> None:
    """Indexing batches run in bf16 (sentence-transformers), queries in fp32 (ONNX): the two
    must be the same vectors for a collection to answer queries, whichever engine built it."""
    texts = _code_chunks(48)
    assert len(texts) >= BULK_MIN_TEXTS
    fp32, bf16 = embedder.embed(texts), bf16_embedder.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    cosine = (fp32 * bf16).sum(axis=1)
    assert cosine.min() >= 0.999, cosine.min()
    # ... and the batch really ran in bf16: the low bits differ from fp32's.
    assert float(np.abs(fp32 - bf16).max()) > 1e-4
    # Long chunks are truncated at 256 tokens by both engines.
    long_texts = [" ".join(["token"] * 254), " ".join(["token"] * 600)] * (BULK_MIN_TEXTS // 2)
    long = bf16_embedder.embed(long_texts)
    assert float(long[0] @ long[1]) > 0.9999


def test_queries_run_in_fp32_whatever_the_bulk_precision(embedder: Embedder, bf16_embedder: Embedder) -> None:
    question = "How does a chat token decide which repos a caller can see?"
    np.testing.assert_allclose(bf16_embedder.embed_query(question), embedder.embed_query(question), atol=1e-6)


def test_precision_auto_follows_the_cpu_and_the_model_folder(model_dir: Path, tmp_path: Path) -> None:
    assert choose_precision("auto", model_dir, cpu_has_bf16=True) == "bf16"
    assert choose_precision("auto", model_dir, cpu_has_bf16=False) == "fp32"
    assert choose_precision("fp32", model_dir, cpu_has_bf16=True) == "fp32"
    onnx_only = tmp_path / "onnx-only"
    onnx_only.mkdir()
    (onnx_only / "model.onnx").write_bytes(b"")
    assert choose_precision("auto", onnx_only, cpu_has_bf16=True) == "fp32"
    with pytest.raises(
        EmbeddingModelError, match=f"bf16 needs a sentence-transformers model folder.*{onnx_only}"
    ):
        choose_precision("bf16", onnx_only)


def test_bf16_units_are_read_from_the_cpu_flags() -> None:
    sapphire_rapids = "processor : 0\nflags : fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    zen3 = "processor : 0\nflags : fpu sse4_2 avx avx2 fma\n"
    assert cpu_has_bf16_units(sapphire_rapids)
    assert cpu_has_bf16_units("flags : avx2 avx512_bf16\n")
    assert not cpu_has_bf16_units(zen3)
    assert not cpu_has_bf16_units("")


def _chunk(text: str, path: str = "a.py") -> Chunk:
    return Chunk(
        repo_id="r",
        path=path,
        line_start=1,
        line_end=1,
        language="python",
        kind="function",
        symbol=None,
        commit_sha="0" * 40,
        content_hash="h",
        text=text,
    )


def test_cache_embeds_each_text_once(embedder: Embedder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    chunks = [_chunk("x = 1"), _chunk("y = 2"), _chunk("x = 1")]
    first = ensure_embeddings(chunks, embedder, cache)
    assert (first.embedded, first.reused) == (3, 0)
    assert cache.count(embedder.model_id) == 2  # identical text is stored once
    second = ensure_embeddings([*chunks, _chunk("z = 3")], embedder, cache)
    assert (second.embedded, second.reused) == (1, 3)
    reopened = EmbeddingCache(tmp_path / "e.sqlite")
    stored = reopened.get_many(embedder.model_id, [chunks[0].embedding_key])
    np.testing.assert_allclose(
        stored[chunks[0].embedding_key], embedder.embed([chunks[0].embedding_text])[0], atol=1e-6
    )
    assert reopened.get_many("another-model", [chunks[0].embedding_key]) == {}


def test_the_active_model_is_the_promoted_adapter_only_in_place_of_the_packaged_model(
    model_dir: Path, write_config: Callable[..., CiaConfig]
) -> None:
    config = write_config([])
    layout = config.layout
    assert active_model(config) == EmbeddingModel(PACKAGED_MODEL, model_dir)
    adapter_dir = adapter_folder(layout, "cia-retrieval-adapter-0123456789abcdef")
    adapter_dir.mkdir(parents=True)
    (adapter_dir / ADAPTER_RECORD).write_text('{"base_model": "sentence-transformers/all-MiniLM-L6-v2"}')
    write_promoted_adapter(
        layout,
        PromotedAdapter("cia-retrieval-adapter-0123456789abcdef", adapter_dir, promoted_at="t"),
        at="t",
    )
    assert active_model(config) == EmbeddingModel("cia-retrieval-adapter-0123456789abcdef", adapter_dir)
    # Turned off, or another model configured: cia.yaml's model.
    off = config.model_copy(
        update={"embedding": config.embedding.model_copy(update={"use_promoted_adapter": False})}
    )
    assert active_model(off).model_id == PACKAGED_MODEL
    other = config.model_copy(
        update={"embedding": config.embedding.model_copy(update={"model": "BAAI/bge-small"})}
    )
    assert active_model(other).model_id == "BAAI/bge-small"
    # A rollback: the configured model again, the adapter folder kept for indexes built with it.
    write_promoted_adapter(layout, None, at="t2")
    assert active_model(config).model_id == PACKAGED_MODEL
    assert model_by_id(config, "cia-retrieval-adapter-0123456789abcdef").model_dir == adapter_dir
    with pytest.raises(EmbeddingModelError, match=r"'cia-retrieval-adapter-00000000000000ff'.*re-index it"):
        model_by_id(config, "cia-retrieval-adapter-00000000000000ff")
    # Only an adapter id names a folder: not a path, and not the candidate being rewritten.
    for bad in ("../../etc", "candidate", "cia-retrieval-adapter-0123/../x"):
        with pytest.raises(EmbeddingModelError, match="re-index it"):
            model_by_id(config, bad)
        with pytest.raises(EmbeddingModelError, match="not a retrieval adapter id"):
            adapter_folder(layout, bad)
