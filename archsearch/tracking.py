"""MLflow tracking, thin: one parent run per study, one nested run per trial.

Written with ``MlflowClient`` and explicit run ids (no global "active run"), so that many workers
and many trials per process log safely. The Optuna study is the source of truth: if the tracking
server is unreachable, the search goes on and says so once.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional

from . import _scoped
from .errors import mask_secrets
from .trials import TrackingConfig

__all__ = ["Tracker"]


def _mlflow_scope():
    """MLflow's settings for one tracking call: fail fast on an unreachable server instead of minutes of
    retries, print no "View run / View experiment" lines of its own (a search prints its own progress),
    and keep its and alembic's INFO lines out; the caller's values are restored after the call, including
    what MLflow changes in its loggers when it is first imported."""
    quiet = {"mlflow": logging.WARNING, "alembic": logging.WARNING}
    stack = contextlib.ExitStack()
    stack.enter_context(_scoped.env(
        MLFLOW_HTTP_REQUEST_MAX_RETRIES=os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
        MLFLOW_HTTP_REQUEST_TIMEOUT=os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "5"),
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
    ))
    stack.enter_context(_scoped.log_levels(quiet))
    import mlflow  # noqa: F401 - its first import configures its loggers: quiet them again after it

    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    return stack


#: Database URIs MLflow opens with SQLAlchemy (a server or file store is opened by MLflow itself).
_DATABASES = ("postgresql", "mysql", "mssql")


def _probe(uri: str, timeout_s: int = 5) -> None:
    """Connect once, with a short timeout, before MLflow does: an unreachable database backend otherwise
    costs minutes of MLflow's own retries and dozens of warnings before the search goes on without it."""
    if not uri.startswith(_DATABASES):
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": timeout_s})
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def _flat(prefix: str, value, out: Dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for i, v in enumerate(value):
            _flat(f"{prefix}.{i}", v, out)
    else:
        out[prefix] = str(value)


class Tracker:
    def __init__(self, config: TrackingConfig, warn: Optional[Callable[[str], None]] = None) -> None:
        self.config = config
        self.warn = warn or logging.getLogger("archsearch").warning
        self.enabled = config.enabled
        self._client = None
        self.experiment_id: Optional[str] = None

    def _fail(self, what: str, err: Exception) -> None:
        if self.enabled:
            self.warn(mask_secrets(
                f"MLflow tracking at {self.config.uri} failed ({what}: {type(err).__name__}: "
                f"{str(err).splitlines()[0][:160]}); continuing without tracking, the Optuna study keeps every trial"
            ))
        self.enabled = False

    def _run(self, what: str, fn: Callable[[], object]):
        if not self.enabled:
            return None
        try:
            with _mlflow_scope():
                return fn()
        except Exception as err:  # noqa: BLE001 - any tracking failure must not stop the search
            self._fail(what, err)
            return None

    @property
    def client(self):
        if self._client is None:
            _probe(self.config.uri)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.config.uri)
        return self._client

    def _experiment(self) -> str:
        if self.experiment_id is None:
            exp = self.client.get_experiment_by_name(self.config.experiment)
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.config.experiment)
        return self.experiment_id

    def start_study(self, study_name: str, params: Dict[str, str]) -> Optional[str]:
        """Create the study's parent run; returns its id."""

        def create() -> str:
            run = self.client.create_run(
                self._experiment(), run_name=f"study:{study_name}", tags={"archsearch.study": study_name}
            )
            for k, v in params.items():
                self.client.log_param(run.info.run_id, k, v[:500])
            return run.info.run_id

        return self._run("create the study run", create)

    def log_trial(
        self,
        parent_run_id: Optional[str],
        *,
        study_name: str,
        number: int,
        state: str,
        params: Dict[str, object],
        metrics: Dict[str, float],
        tags: Dict[str, str],
        spec_yaml: Optional[str],
    ) -> Optional[str]:
        def log() -> str:
            from mlflow.entities import Metric, Param, RunTag

            all_tags = {"archsearch.study": study_name, "optuna.trial_number": str(number), "optuna.state": state, **tags}
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(self._experiment(), run_name=f"trial-{number}", tags=all_tags)
            rid = run.info.run_id
            flat: Dict[str, str] = {}
            _flat("", params, flat)
            self.client.log_batch(
                rid,
                metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
                params=[Param(k, v[:500]) for k, v in flat.items()],
                tags=[RunTag(k, v) for k, v in all_tags.items()],
            )
            if spec_yaml:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "spec.yaml"
                    path.write_text(spec_yaml, encoding="utf-8")
                    self.client.log_artifact(rid, str(path))
            self.client.set_terminated(rid, "FINISHED" if state in ("COMPLETE", "PRUNED") else "FAILED")
            return rid

        return self._run(f"log trial {number}", log)

    def log_study_artifacts(self, parent_run_id: Optional[str], directory: Path) -> None:
        if parent_run_id:
            self._run("log the Pareto artifacts", lambda: self.client.log_artifacts(parent_run_id, str(directory), "pareto"))

    def finish_study(self, parent_run_id: Optional[str]) -> None:
        if parent_run_id:
            self._run("close the study run", lambda: self.client.set_terminated(parent_run_id, "FINISHED"))

