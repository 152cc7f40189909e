"""What starts a round of learning: enough new user feedback (the sensor) or a week of
changed code (the schedule on the synthetic dataset)."""

import json
from datetime import datetime

import dagster as dg

from cia_assets.defs.datasets.assets import synthetic_qa_dataset, training_dataset
from cia_assets.defs.resources import CiaConfigResource
from cia_assets.defs.training.retrieval import retrieval_adapter, retrieval_embedding_model

# Feedback -> analytics (golden and failed answers) -> training set -> adapter -> evaluation
# -> serving (gated by the blocking evaluation check).
learning_loop_job = dg.define_asset_job(
    "learning_loop",
    # The retrieval adapter learns from commit history, not feedback: its own job.
    selection=(
        dg.AssetSelection.groups("analytics", "training", "evaluation", "serving")
        | dg.AssetSelection.assets(training_dataset)
    )
    - dg.AssetSelection.assets(retrieval_adapter, retrieval_embedding_model),
    description="Analytics over feedback, a new training set and adapter, its evaluation, and serving.",
)

# In the cluster only pods with this label may reach the teacher endpoint (NetworkPolicy
# `teacher-endpoint`): the run pod of this job gets it through the K8s run launcher.
TEACHER_EGRESS_TAGS = {
    "dagster-k8s/config": {
        "pod_template_spec_metadata": {"labels": {"cia.example.com/teacher-egress": "true"}}
    }
}

synthetic_refresh_job = dg.define_asset_job(
    "synthetic_refresh",
    selection=dg.AssetSelection.assets(synthetic_qa_dataset),
    description="New teacher-written pairs for the repos whose index changed (the only job whose "
    "pods may reach the teacher endpoint in the cluster).",
    tags=TEACHER_EGRESS_TAGS,
)


@dg.sensor(job=learning_loop_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING)
def feedback_sensor(context: dg.SensorEvaluationContext, cia: CiaConfigResource) -> dg.SensorResult:
    """Counts user feedback that arrived since the last round: from Langfuse's API when
    Langfuse is configured (chat-app votes are forwarded there, and annotations are made
    there), else from the local trace store. A vote counts once per voter and answer (a voter
    who changes their mind is not a new vote), and a round needs `feedback.min_new_feedback`
    such votes from at least `feedback.min_voters` distinct voters, so no single token can
    start training. Below that it keeps counting from the same point."""
    config = cia.load()
    state = json.loads(context.cursor) if context.cursor else {}
    if config.langfuse.enabled:
        from cia_assets.lib.observability.langfuse import feedback_scores_since

        since = datetime.fromisoformat(state["langfuse_since"]) if state.get("langfuse_since") else None
        try:
            scores = feedback_scores_since(config.langfuse, since)
        except Exception as error:  # Langfuse down: try again next tick, the cursor stays
            return dg.SensorResult(skip_reason=f"Langfuse did not answer: {error}", cursor=context.cursor)
        # A score without a trace (an annotation on a session) is one vote of its own.
        votes = {(s.voter, s.trace_id or f"score-{n}") for n, s in enumerate(scores)}
        newest = max((s.timestamp for s in scores), default=None)
        mark = {"langfuse_since": newest.isoformat() if newest else state.get("langfuse_since")}
    else:
        from cia_assets.lib.observability.traces import TraceStore

        rows = TraceStore(config.layout.traces).feedback_after(int(state.get("local_seq", 0)), limit=100_000)
        votes = {(str(r["voter"]), str(r["trace_id"])) for r in rows}
        mark = {"local_seq": max((int(r["seq"]) for r in rows), default=state.get("local_seq", 0))}
    voters = len({voter for voter, _ in votes})
    settings = config.feedback
    if len(votes) < settings.min_new_feedback or voters < settings.min_voters:
        return dg.SensorResult(
            skip_reason=(
                f"{len(votes)} new vote(s) from {voters} voter(s) since the last round; the loop "
                f"starts at {settings.min_new_feedback} votes from {settings.min_voters} voters"
            ),
            cursor=context.cursor,
        )
    cursor = json.dumps({**state, **mark}, sort_keys=True)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"feedback-{cursor}",
                tags={"cia/new_feedback": str(len(votes)), "cia/new_voters": str(voters)},
            )
        ],
        cursor=cursor,
    )


@dg.schedule(
    job=synthetic_refresh_job,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def weekly_synthetic_refresh(
    context: dg.ScheduleEvaluationContext, cia: CiaConfigResource
) -> dg.RunRequest | dg.SkipReason:
    """Mondays 03:00 UTC: regenerates the synthetic pairs of the repos whose indexed commit
    changed since the current dataset was written; pairs of unchanged repos are kept."""
    from cia_assets.lib.learning.synthetic_refresh import changed_repos

    changed = changed_repos(cia.load())
    if not changed:
        return dg.SkipReason("no repo's index changed since the current synthetic dataset")
    return dg.RunRequest(
        run_key=f"synthetic-{context.scheduled_execution_time:%Y%m%d}",
        run_config={"ops": {"synthetic_qa_dataset": {"config": {"repos": changed}}}},
        tags={"cia/changed_repos": ",".join(changed)},
    )
