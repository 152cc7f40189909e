"""What every trainer pod does around its training: read the Pipes extras, send each logged
loss back as a custom message, report the result as the asset materialization's metadata, and
end its process. Imports dagster_pipes only (the pods run without cia_assets)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

LossCallback = Callable[[int, float], None]
Trainer = Callable[[dict[str, Any], LossCallback], dict[str, Any]]
# (extras, the trainer's summary) -> the materialization's metadata; raises when the trainer
# wrote nothing usable.
Report = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def train_and_report(trainer: Trainer, report: Report) -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        extras = dict(pipes.extras)
        losses: list[tuple[int, float]] = []

        def on_loss(step: int, loss: float) -> None:
            losses.append((step, loss))
            pipes.log.info(f"step {step}: loss {loss:.4f}")
            pipes.report_custom_message({"step": step, "loss": loss})

        started = time.monotonic()
        summary = trainer(extras, on_loss)
        pipes.report_asset_materialization(
            metadata={
                **report(extras, summary),
                "train_seconds": round(time.monotonic() - started, 1),
                "final_loss": losses[-1][1] if losses else None,
                "steps": len(losses),
                "losses": {"raw_value": json.dumps(losses), "type": "text"},
            }
        )


def run_pod(trainer: Trainer, report: Report) -> None:
    """The container's entry point: train, report, then end the process.

    On an H100 a pod once stayed alive after training and reporting had finished (torch compile
    workers outliving the script); Kubernetes then keeps the GPU and Dagster keeps waiting for the
    pod. Once Pipes is closed nothing is left to do, so the process ends without waiting for
    stray threads. A failure still raises, with its traceback and a non-zero exit code.
    """
    train_and_report(trainer, report)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
