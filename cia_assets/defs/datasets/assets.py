"""Datasets for distillation: synthetic Q&A from a teacher, and the train/eval split that
adds the golden answers users rated up."""

import json
from typing import Any

import dagster as dg

from cia_assets.defs.indexing.assets import code_chunks
from cia_assets.defs.owners import OWNERS
from cia_assets.defs.resources import CiaConfigResource
from cia_assets.lib.core import artifacts
from cia_assets.lib.core.layout import EVAL_FILE, PAIRS_FILE, TRAIN_FILE

SYNTHETIC_FORMAT_VERSION = "1"
TRAINING_FORMAT_VERSION = "2"  # 2: abstention examples


class SyntheticConfig(dg.Config):
    repos: list[str] = []  # noqa: RUF012 (pydantic copies defaults)
    """Only these repos get new pairs (empty: all); the current pairs of the others are kept."""


@dg.asset(
    deps=[code_chunks],
    group_name="datasets",
    kinds={"python", "openai", "jsonl"},
    owners=OWNERS,
    code_version=SYNTHETIC_FORMAT_VERSION,
)
def synthetic_qa_dataset(
    context: dg.AssetExecutionContext, config: SyntheticConfig, cia: CiaConfigResource
) -> dg.MaterializeResult:
    """Question -> ideal answer pairs written by a teacher model, each answer citing the
    source chunk it was written from ([1] = that chunk's file and lines).

    Chunks are sampled across repos, languages and symbol kinds; secrets are redacted from the
    code before any request (detect-secrets plus high-entropy strings); duplicates, replies
    that are not the asked JSON and answers that do not cite their source are dropped and
    counted. The teacher is `datasets.teacher` in cia.yaml: by default the packaged
    Qwen2.5-Coder-1.5B on a local llama.cpp server of its own for the run; a hosted API or a
    large vLLM model at `base_url`; `model: null` is the live served endpoint. A run that
    yields no pair publishes nothing, so the previous dataset stays current.
    """
    from cia_assets.lib.indexing.pipeline import read_chunks
    from cia_assets.lib.learning.synthetic import (
        PAIR_SCHEMA,
        SyntheticPair,
        generate_pairs,
        sample_chunks,
        strata_counts,
    )
    from cia_assets.lib.learning.synthetic_refresh import indexed_commits
    from cia_assets.lib.serving.endpoint import EndpointError
    from cia_assets.lib.serving.model_endpoints import model_endpoint

    project = cia.load()
    layout = cia.layout()
    settings = project.datasets
    unknown = sorted(set(config.repos) - set(project.repo_ids))
    if unknown:
        raise dg.Failure(description=f"repos {', '.join(unknown)} are not in {project.config_path}")
    selected = config.repos or project.repo_ids
    chunks = [
        chunk
        for repo_id in selected
        if layout.chunks(repo_id).is_file()
        for chunk in read_chunks(layout.chunks(repo_id))
    ]
    if not chunks:
        raise dg.Failure(description="no code chunks yet: materialize code_chunks for the repos first")
    root = layout.synthetic_datasets
    previous = artifacts.current(root)
    kept: list[SyntheticPair] = []
    recorded: dict[str, str] = {}
    if previous is not None and config.repos:
        kept = [
            pair
            for pair in map(SyntheticPair.from_json, artifacts.read_jsonl(previous.path / PAIRS_FILE))
            if pair.source.repo not in selected and pair.source.repo in project.repo_ids
        ]
        recorded = dict(previous.summary.get("indexed_commits", {}))
    sample = sample_chunks(
        chunks,
        settings.synthetic_pairs,
        seed=settings.seed,
        min_lines=settings.min_chunk_lines,
        max_lines=settings.max_chunk_lines,
    )
    try:
        with model_endpoint(project, settings.teacher, role="datasets.teacher") as teacher:
            context.log.info(f"asking {teacher.label} for {len(sample)} pairs from {len(chunks)} chunks")
            report = generate_pairs(
                sample,
                lambda messages: teacher.complete_json(messages, PAIR_SCHEMA),
                teacher_name=teacher.label,
                base64_limit=settings.entropy_limit_base64,
                hex_limit=settings.entropy_limit_hex,
                progress=lambda done, total: context.log.debug(f"{done}/{total}") if done % 10 == 0 else None,
            )
    except (ValueError, EndpointError) as error:  # an unknown packaged model, a server that did not start
        raise dg.Failure(description=f"the teacher cannot answer: {error}") from error
    counts = {**report.counts(), "kept_from_previous": len(kept)}
    if not report.pairs:
        raise dg.Failure(
            description=f"the teacher {teacher.label} produced no usable pair; nothing was published",
            metadata={**counts, "errors": dg.MetadataValue.json(report.errors)},
        )
    pairs = kept + report.pairs
    commits = indexed_commits(project)
    recorded.update({repo: commits[repo] for repo in selected if repo in commits})
    version, folder = artifacts.new_version(root)
    artifacts.write_jsonl(folder / PAIRS_FILE, [pair.to_json() for pair in pairs])
    strata = strata_counts(pairs)
    summary: dict[str, Any] = {
        **counts,
        "total_pairs": len(pairs),
        "teacher": teacher.label,
        "strata": strata,
        "indexed_commits": recorded,
        "repos_refreshed": selected,
    }
    (folder / "report.json").write_text(json.dumps({**summary, "errors": report.errors}, indent=1))
    artifacts.publish(root, version, summary)
    preview = "\n".join(
        f"| {p.question} | {p.answer} | `{p.source.path}#L{p.source.line_start}-L{p.source.line_end}` |"
        for p in report.pairs[:5]
    )
    return dg.MaterializeResult(
        metadata={
            **counts,
            "version": version,
            "path": dg.MetadataValue.path(str(folder / PAIRS_FILE)),
            "total_pairs": len(pairs),
            "repos_refreshed": dg.MetadataValue.json(selected),
            "teacher": teacher.label,
            "strata": dg.MetadataValue.json(strata),
            "teacher_errors_sample": dg.MetadataValue.json(report.errors),
            "preview": dg.MetadataValue.md("| question | answer | source |\n|---|---|---|\n" + preview),
        },
        data_version=dg.DataVersion(version),
    )


@dg.asset(
    deps=[synthetic_qa_dataset, dg.AssetKey("golden_examples")],
    group_name="datasets",
    kinds={"python", "jsonl"},
    owners=OWNERS,
    code_version=TRAINING_FORMAT_VERSION,
)
def training_dataset(context: dg.AssetExecutionContext, cia: CiaConfigResource) -> dg.MaterializeResult:
    """Synthetic pairs and golden answers (rated up by users) in the chat format the served
    model sees: the answering prompt, numbered sources, an answer citing them.

    Split train/eval by source file, so no file feeds both; each synthetic example shows its
    source beside a distractor from another file, so the model learns to cite the right one.
    A share of training questions (`datasets.abstention_share`) is also shown with other
    files' sources only, answered `NOT FOUND`, so the student keeps abstaining.
    """
    from cia_assets.lib.answering.prompts import load_prompt
    from cia_assets.lib.learning.synthetic import SyntheticPair
    from cia_assets.lib.learning.training_data import build_split, golden_example
    from cia_assets.lib.observability.analytics import read_golden_examples
    from cia_assets.lib.observability.langfuse.prompts import PromptCache
    from cia_assets.lib.sources.mirrors import MirrorPool

    config = cia.load()
    layout = cia.layout()
    try:
        synthetic = artifacts.require_current(layout.synthetic_datasets, "synthetic_qa_dataset")
    except FileNotFoundError as error:
        raise dg.Failure(description=str(error)) from error
    pairs = [SyntheticPair.from_json(row) for row in artifacts.read_jsonl(synthetic.path / PAIRS_FILE)]
    golden_rows = read_golden_examples(layout)
    mirrors = MirrorPool(config)
    try:
        built = [golden_example(row, mirrors.read_lines) for row in golden_rows]
    finally:
        mirrors.close()
    golden = [example for example in built if example is not None]
    split = build_split(
        pairs,
        golden,
        eval_share=config.datasets.eval_share,
        seed=config.datasets.seed,
        abstention_share=config.datasets.abstention_share,
        skipped_golden=len(built) - len(golden),
    )
    if not split.train or not split.eval:
        raise dg.Failure(
            description=(
                f"{len(pairs)} synthetic pairs and {len(golden)} golden answers over "
                f"{len(split.train_files | split.eval_files)} files cannot make both a train and an eval "
                "split; generate more pairs (datasets.synthetic_pairs)"
            )
        )
    prompt = load_prompt(config, PromptCache())
    root = layout.training_datasets
    version, folder = artifacts.new_version(root)
    artifacts.write_jsonl(folder / TRAIN_FILE, [e.to_json(prompt) for e in split.train])
    artifacts.write_jsonl(folder / EVAL_FILE, [e.to_json(prompt) for e in split.eval])
    summary: dict[str, Any] = {
        "train_examples": len(split.train),
        "eval_examples": len(split.eval),
        "train_files": len(split.train_files),
        "eval_files": len(split.eval_files),
        "golden_examples": len(golden),
        "abstention_examples": sum(e.origin == "abstention" for e in split.train),
        "golden_skipped": split.skipped_golden,
        "synthetic_version": synthetic.version,
        "prompt_version": prompt.version,
    }
    artifacts.publish(root, version, summary)
    context.log.info(f"training set {version}: {summary}")
    return dg.MaterializeResult(
        metadata={
            **summary,
            "version": version,
            "path": dg.MetadataValue.path(str(folder)),
            "files_in_both_splits": len(split.train_files & split.eval_files),
        },
        data_version=dg.DataVersion(version),
    )
