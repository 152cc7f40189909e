"""One round of the learning loop on a dev-set repository, on CPU, and its teacher/base/tuned
table: the numbers the learning-loop issue asks for.

    .venv/bin/python -m cia_assets_tests.bench.bench_learning_round [--mirror GIT_DIR]
        [--repo OWNER/NAME] [--questions N] [--absent N] [--pairs N] [--steps N] [--out FILE]

The repository (default: the `pydata/xarray` mirror under /work/.mirror) is indexed at the
commit its SWE-QA dev questions pin, through the normal indexing assets. Then the loop's own
assets run as `learning_loop` runs them: the teacher (default: the packaged 1.5B) writes
`--pairs` synthetic pairs, the training set is split by file, the student (the packaged 0.5B,
the served model) gets a CPU LoRA adapter of `--steps` steps, and `rag_eval_results` asks the
eval split and a fixed question set (`--questions` dev questions of the repo and `--absent`
absent-feature questions from answer_sets/absent_features.jsonl) of the teacher, the base model
and the adapter, with the blocking promotion check after it. No judge (the 1.5B judging every
answer would double the run): faithfulness is left out of this table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

DEVSETS = Path(__file__).resolve().parents[3] / "shared" / "devsets"
ANSWER_SETS = Path(__file__).resolve().parent / "answer_sets"


def _question_set(repo: str, questions: int, absent: int, out: Path) -> str:
    """The repo's first dev questions and absent-feature questions; returns their commit."""

    def rows(path: Path) -> list[dict[str, Any]]:
        parsed = (json.loads(line) for line in path.read_text().splitlines() if line)
        return [row for row in parsed if row["repo"] == repo]

    real = rows(DEVSETS / "swe_qa_dev.jsonl")[:questions]
    if not real:
        raise SystemExit(f"swe_qa_dev.jsonl has no question about {repo}")
    missing = rows(ANSWER_SETS / "absent_features.jsonl")[:absent]
    out.write_text("".join(json.dumps(row) + "\n" for row in [*real, *missing]))
    commits = {row["commit"] for row in real}
    if len(commits) != 1:
        raise SystemExit(f"{repo}'s dev questions pin {len(commits)} commits; this bench indexes one")
    return commits.pop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mirror", type=Path, default=Path("/work/.mirror/pydata+xarray/repo"))
    parser.add_argument("--repo", default="pydata/xarray")
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--absent", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--eval-questions", type=int, default=8, help="evaluation.max_questions")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import dagster as dg

    from cia_assets.config import load_config
    from cia_assets.defs.datasets.assets import synthetic_qa_dataset, training_dataset
    from cia_assets.defs.evaluation.assets import rag_eval_results
    from cia_assets.defs.evaluation.checks import challenger_no_worse_than_champion
    from cia_assets.defs.resources import build_resources
    from cia_assets.defs.training.assets import lora_adapter
    from cia_assets.lib.indexing.embeddings import packaged_model_dir
    from cia_assets.lib.serving.endpoint import stop_local_endpoint
    from cia_assets_tests.support.materialize import asset_metadata, materialize_repo

    root = Path(tempfile.mkdtemp(prefix="cia-bench-round-"))
    repo_id = args.repo.split("/")[-1]
    commit = _question_set(args.repo, args.questions, args.absent, root / "questions.jsonl")
    # A bare copy with a branch at the pinned commit: the codebase indexes that branch.
    bare = root / f"{repo_id}.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(args.mirror), str(bare)], check=True)
    subprocess.run(["git", f"--git-dir={bare}", "branch", "-f", "devset", commit], check=True)
    (root / "cia.yaml").write_text(
        yaml.safe_dump(
            {
                "data_dir": str(root / "data"),
                "codebases": [{"url": f"file://{bare}", "id": repo_id, "branch": "devset"}],
                "embedding": {"path": str(packaged_model_dir(root / "models"))},
                "llm": {"port": 8694, "drain_s": 0},
                "datasets": {"synthetic_pairs": args.pairs},
                "training": {"max_steps": args.steps, "batch_size": 2},
                "evaluation": {
                    "max_questions": args.eval_questions,
                    "ragas": False,
                    "history_cases": 0,
                    "question_sets": ["questions.jsonl"],
                },
            }
        )
    )
    config = load_config(root / "cia.yaml")
    instance = dg.DagsterInstance.ephemeral()
    report: dict[str, Any] = {"repo": args.repo, "commit": commit, "root": str(root), "seconds": {}}
    started = time.perf_counter()
    try:
        materialize_repo(config, instance, repo_id)
        report["seconds"]["index"] = round(time.perf_counter() - started, 1)
        steps = {
            "synthetic_qa_dataset": [synthetic_qa_dataset],
            "training_dataset": [training_dataset],
            "lora_adapter": [lora_adapter],
            "rag_eval_results": [rag_eval_results, challenger_no_worse_than_champion],
        }
        for name, assets in steps.items():
            began = time.perf_counter()
            result = dg.materialize(
                assets,  # type: ignore[arg-type]
                instance=instance,
                resources=build_resources(str(config.config_path)),
                raise_on_error=False,
            )
            report["seconds"][name] = round(time.perf_counter() - began, 1)
            metadata = asset_metadata(result, name)
            if name == "synthetic_qa_dataset":
                report["synthetic"] = {k: metadata[k] for k in ("pairs", "teacher") if k in metadata}
            elif name == "lora_adapter":
                losses = [point["loss"] for point in metadata["loss_curve"]]  # type: ignore[attr-defined]
                report["training"] = {
                    "steps": args.steps,
                    "seconds_per_step": round(report["seconds"][name] / args.steps, 1),
                    "first_loss": losses[0],
                    "last_loss": losses[-1],
                    **{k: metadata[k] for k in ("eval_loss_base", "eval_loss_adapter") if k in metadata},
                }
            elif name == "rag_eval_results":
                evaluation = json.loads(Path(str(metadata["report"])).read_text())
                report["verdict"] = evaluation["verdict"]
                report["checks"] = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
                report["split_questions"] = evaluation["questions"]
                # Model -> the split's figures and the fixed set's (`set_*`), as the gate saw them.
                report["table"] = evaluation["models"]
                report["answers"] = {
                    model: rows[:3] for model, rows in evaluation["answers"].items()
                }  # a few, to read
    finally:
        stop_local_endpoint(config)
    report["seconds"]["total"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
