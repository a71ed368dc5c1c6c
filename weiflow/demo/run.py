"""``weiflow demo run`` (``./dev demo``): from nothing to a served model, on this machine's defaults.

1. a day of feed impressions from the known generative model (:mod:`weiflow.demo.data`), where
   ``xml_specs/feed_ctr.xml`` reads them, with the Bayes-optimal AUC the model could reach;
2. the pipeline: Spark features, parameter-server training (1 PS + 2 workers on 127.0.0.1),
   evaluate, export, publish into the model repository;
3. the prediction service (``weiflow serve``) over the repository, scoring a few raw impressions,
   then the next day's impressions, whose Bayes-optimal AUC is known row by row: the served model's
   AUC on them against the best any model could reach on the very same rows (``auc_ratio``);
4. a summary on the terminal and in ``var/demo/summary.json``.

Progress is drawn with rich (each node and module, elapsed time, rows and bytes written, training
steps with loss, AUC and examples/s); ``quiet`` prints only the summary. Every step must succeed
for a zero exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from weiflow.config import Settings
from weiflow.dag import compile_file
from weiflow.errors import WeiflowError
from weiflow.modelrepo import FileRepository
from weiflow.modelrepo.contracts import TRAINING_CURVE_PATH
from weiflow.processes import ServerNotReady, free_port, running_server
from weiflow.runtime import RunContext, run_pipeline
from weiflow.runtime.context import new_run_id
from weiflow.runtime.trackers import run_tracker
from weiflow.storage import local_path
from weiflow.tracking import Event, EventKind, FanoutTracker

__all__ = ["DEFAULT_SPEC", "DEFAULT_STEPS", "DemoFailed", "run_demo"]

DEFAULT_SPEC = Path("xml_specs/feed_ctr.xml")
DEFAULT_STEPS = 8000  # 99% of the Bayes-optimal AUC at the default 400k rows (docs/demo-data.md)
MODEL = "feed_ctr"
SERVE_READY_S = 180.0
# The next day's impressions scored through the service: as many as the pipeline holds out (10%).
SERVED_EVAL_SHARE = 0.1
SCORE_BATCH = 1000  # instances per :score request


class DemoFailed(WeiflowError):
    """A step of the demo failed; the message says which and where its log is."""


@dataclass
class _Progress:
    """A tracker drawing the run's progress: one line per node and module as they end, with times and sizes."""

    console: Any
    quiet: bool
    started: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    bars: Any = None  # rich.progress.Progress while a module reports training progress
    bar_tasks: dict[str, Any] = field(default_factory=dict)
    printed: dict[str, int] = field(default_factory=dict)  # off a terminal: the last tenth of the steps shown

    def emit(self, event: Event) -> None:
        key = f"{event.node}/{event.module}" if event.module else str(event.node)
        if event.kind is EventKind.PROGRESS:
            self._progress(key, event.detail)
        elif event.kind in (EventKind.NODE_STARTED, EventKind.MODULE_STARTED):
            self.started[key] = time.monotonic()
            if event.kind is EventKind.NODE_STARTED:
                self._say(f"[bold]{event.node}[/bold] started")
        elif event.kind in (
            EventKind.NODE_SUCCEEDED,
            EventKind.MODULE_SUCCEEDED,
            EventKind.NODE_FAILED,
            EventKind.MODULE_FAILED,
        ):
            self._end_bars()
            took = time.monotonic() - self.started.get(key, time.monotonic())
            ok = event.kind in (EventKind.NODE_SUCCEEDED, EventKind.MODULE_SUCCEEDED)
            mark = "[green]ok[/green]" if ok else "[red]failed[/red]"
            indent = "    " if event.module else "  "
            error = f": {event.error}" if event.error else ""
            self._say(f"{indent}{key} {mark} in {took:.1f}s{error}")
        elif event.kind is EventKind.DATASET_WRITTEN and event.dataset is not None:
            d = event.dataset
            rows = f"{d.rows:,} rows, " if d.rows is not None else ""
            size = f"{(d.size_bytes or 0) / 2**20:.1f} MiB" if d.size_bytes is not None else "?"
            self._say(f"      wrote {d.name}: {rows}{size} in {d.files} file(s)")
        elif event.kind is EventKind.METRICS and event.module:
            figures = {k: v for k, v in event.detail.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            if figures:
                self.training[key] = figures
                shown = ", ".join(f"{k} {v:.4g}" for k, v in list(figures.items())[:6])
                self._say(f"      {key}: {shown}")

    def _progress(self, key: str, point: dict[str, Any]) -> None:
        """A training module's progress: steps done of its target, the last call's loss and AUC, the speed.

        A live bar on a terminal; elsewhere (a log, CI) a line at every tenth of the steps.
        """
        step, steps = point.get("step"), point.get("steps")
        if self.quiet or not isinstance(step, int) or not isinstance(steps, int) or steps <= 0:
            return
        figures = _figures(point)
        if not self.console.is_terminal:
            tenth = step * 10 // steps
            if tenth > self.printed.get(key, -1):
                self.printed[key] = tenth
                self._say(f"      {key}: step {step:,}/{steps:,}  {figures}")
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if self.bars is None:
            self.bars = Progress(
                TextColumn("      {task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[figures]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.bars.start()
        if key not in self.bar_tasks:
            self.bar_tasks[key] = self.bars.add_task(key, total=steps, figures="")
        self.bars.update(self.bar_tasks[key], completed=step, figures=figures)

    def _end_bars(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars, self.bar_tasks = None, {}

    def _say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)


def _figures(point: dict[str, Any]) -> str:
    """A progress point's loss, AUC and speed, as far as it has them."""
    shown = []
    if isinstance(point.get("loss"), float):
        shown.append(f"loss {point['loss']:.4f}")
    if isinstance(point.get("auc"), float):
        shown.append(f"AUC {point['auc']:.3f}")
    if isinstance(point.get("examples_per_s"), float):
        shown.append(f"{point['examples_per_s']:,.0f} examples/s")
    return "  ".join(shown)


def _retention_text(policy: str | None, written: datetime) -> str:
    """When retention would delete a dataset written at ``written`` under ``policy``."""
    if not policy:
        return "kept (no retention policy)"
    kind, _, value = policy.partition(":")
    if kind == "ttl":
        return f"{policy}: deletable after {(written + timedelta(days=int(value))):%Y-%m-%d} (the center's sweep)"
    if kind == "idle":
        return f"{policy}: deletable {value} days after its last read"
    if kind == "consumed":
        return "consumed: deletable once every node that reads it has succeeded"
    if kind == "keep-last":
        return f"{policy}: the newest {value} of this pipeline's stay"
    return policy


@contextlib.contextmanager
def _serving(repository: str, log: Path) -> Iterator[str]:
    """``weiflow serve`` over ``repository`` on a free port while the block runs; its URL once ready."""
    port = free_port()
    argv = [sys.executable, "-m", "weiflow", "serve", f"--repository={repository}", f"--rest_api_port={port}"]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        with running_server(argv, ready_url=f"{url}/v2/health/ready", log=log, timeout_s=SERVE_READY_S, env=env):
            yield url
    except ServerNotReady as exc:
        raise DemoFailed(str(exc)) from exc


def run_demo(
    settings: Settings,
    *,
    spec: Path = DEFAULT_SPEC,
    rows: int | None = None,
    day: date | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the demo; the summary (also written to ``var/demo/summary.json``). Raises :class:`DemoFailed`."""
    from rich.console import Console

    from weiflow.demo.cli import default_impressions_uri
    from weiflow.demo.data import DEFAULT_ROWS, arrow_table, generate, write_impressions

    # The demo's own output goes to the terminal's stderr; what the engines' processes print there (Spark's
    # JVM and Python workers, TensorFlow's C++ logging, which ignores TF_CPP_MIN_LOG_LEVEL this early) goes
    # to var/demo/engines.log while the pipeline and the service run.
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    console = Console(file=terminal, highlight=False)
    began = time.monotonic()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the PS and workers inherit it: no C++ chatter
    day = day or datetime.now(UTC).date()
    run_id = new_run_id()
    if not spec.is_file():
        raise DemoFailed(f"{spec}: no such spec; run the demo from the repository root (it holds xml_specs/)")

    # 1. the data
    uri = default_impressions_uri(settings.storage, day)
    if not quiet:
        console.print(f"[bold]1/4[/bold] generating {rows or DEFAULT_ROWS:,} impressions of {day} into {uri}")
    impressions = generate(rows or DEFAULT_ROWS, day, seed=seed)
    data = write_impressions(impressions, uri, run_id=f"demo__{run_id}")

    demo_dir = settings.var_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    with _engine_output_to(demo_dir / "engines.log"):
        # 2. the pipeline
        if not quiet:
            console.print(f"[bold]2/4[/bold] running {spec} (run {run_id}): Spark features, 1 PS + 2 workers, publish")
        dag = compile_file(spec, max_bytes=settings.max_spec_bytes, allowed_callables=settings.allowed_callables)
        log_tracker, log_path = run_tracker(settings, dag.name, run_id)
        progress = _Progress(console, quiet)
        run = RunContext.create(
            dag,
            settings=settings,
            tracker=FanoutTracker(log_tracker, progress),
            run_id=run_id,
            ds=day,
            overrides={"day": day.isoformat(), "train_steps": str(steps)},
        )
        result = run_pipeline(run)
        if not result.succeeded:
            failed = ", ".join(f"{node}: {error}" for node, error in result.errors.items())
            raise DemoFailed(
                f"the pipeline failed ({failed}); run log: {log_path}; the engines' output: {demo_dir / 'engines.log'}"
            )

        # 3. the model it published, and the prediction service
        repository = FileRepository(f"{settings.storage.rstrip('/')}/models")
        ours = [v for v in repository.versions(MODEL) if repository.manifest(MODEL, v).run_id == run_id]
        if not ours:
            raise DemoFailed(f"the run published no version of '{MODEL}' into {repository.uri}; run log: {log_path}")
        version = ours[-1]
        metrics = dict(repository.manifest(MODEL, version).metrics)
        routing = repository.read_routing(MODEL)
        rows_shown = arrow_table(impressions).slice(0, 3).to_pylist()
        requests = [{k: v for k, v in row.items() if k not in ("label", "ts")} for row in rows_shown]
        if not quiet:
            console.print(
                f"[bold]3/4[/bold] serving {repository.uri} with weiflow serve, scoring {len(requests)} requests"
            )
        with _serving(repository.uri, demo_dir / "serve.log") as url:
            endpoint = f"{url}/v1/models/{MODEL}/versions/{version}:score"
            scores = _score(endpoint, requests)
            next_day = day + timedelta(days=1)
            if not quiet:
                console.print(f"      scoring {next_day}'s impressions to compare with the best possible on them")
            served = _served_quality(
                endpoint, generate(max(1000, int(len(impressions.label) * SERVED_EVAL_SHARE)), next_day, seed=seed)
            )

    # 4. the summary
    written = datetime.now(UTC)
    # The pipeline splits its own random holdout (Spark's), not the generator's: the Bayes-optimal AUC over
    # every row is what any random holdout's expected best is (the generator's holdout figure is one draw).
    bayes = data["bayes_auc"]
    auc = metrics.get("auc")
    summary = {
        # The pipeline's evaluate module on its own 10% holdout, and the best AUC over all generated rows.
        "auc": auc,
        "bayes_auc": bayes,
        "holdout_auc_ratio": (auc / bayes) if auc is not None and bayes else None,
        "logloss": metrics.get("logloss"),
        "bayes_logloss": data["bayes_logloss"],
        # The served model against the best possible on the same (next-day) rows: both AUCs share every
        # label, so their ratio is free of the sampling noise that moves each AUC by about +-0.006.
        "auc_ratio": served["auc_ratio"],
        "served": served,
        "model": MODEL,
        "version": version,
        "traffic": {str(v): share for v, share in routing.traffic.items()},
        "endpoint": f"http://127.0.0.1:8501/v1/models/{MODEL}:score",
        "prediction": {"instances": requests, "scores": scores},
        "curl": (
            f"curl -s http://127.0.0.1:8501/v1/models/{MODEL}:score -d "
            f"'{json.dumps({'instances': requests[:1], 'key': 'user-42'})}'"
        ),
        "serve": f"weiflow serve --repository={repository.uri}",
        "training_curve": _training_curve(repository.uri, version),
        "run_id": run_id,
        "run_log": str(log_path),
        "engines_log": str(demo_dir / "engines.log"),
        "datasets": {
            d.name: {"uri": run.datasets[d.name].uri, "retention": _retention_text(d.retention, written)}
            for d in dag.spec.datasets
        },
        "console": "weiflow center serve  (http://127.0.0.1:8765; or ./dev up for center, Airflow and serving)",
        "airflow": "./dev airflow  (http://127.0.0.1:8080, every spec of xml_specs/ as a DAG)",
        "seconds": round(time.monotonic() - began, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
    }
    (demo_dir / "summary.json.tmp").write_text(json.dumps(summary, indent=2) + "\n")
    (demo_dir / "summary.json.tmp").replace(demo_dir / "summary.json")
    _print_summary(console, summary, demo_dir / "summary.json")
    return summary


def _training_curve(repository: str, version: int) -> str | None:
    """The PNG the export put beside the model (loss and AUC by step, per worker), if it is there."""
    root = local_path(repository)
    curve = root / MODEL / str(version) / TRAINING_CURVE_PATH if root is not None else None
    return str(curve) if curve is not None and curve.is_file() else None


def _score(endpoint: str, instances: list[dict[str, Any]]) -> list[float]:
    import httpx

    answer = httpx.post(endpoint, json={"instances": instances, "key": "user-42"}, timeout=60)
    if answer.status_code != 200:
        raise DemoFailed(f"the prediction service answered {answer.status_code}: {answer.text[:500]}")
    return [float(s) for s in answer.json()["scores"]]


def _served_quality(endpoint: str, impressions: Any) -> dict[str, Any]:
    """The served model's AUC and log loss on ``impressions`` (raw rows through :score), and the Bayes-optimal ones."""
    from weiflow.demo.data import arrow_table
    from weiflow.demo.metrics import log_loss, roc_auc

    rows = arrow_table(impressions).drop_columns(["label", "ts"]).to_pylist()
    scores: list[float] = []
    for begin in range(0, len(rows), SCORE_BATCH):
        scores += _score(endpoint, rows[begin : begin + SCORE_BATCH])
    labels = impressions.label
    auc, bayes = roc_auc(labels, scores), roc_auc(labels, impressions.click_probability)
    return {
        "day": impressions.day.isoformat(),
        "rows": len(rows),
        "auc": round(auc, 6),
        "bayes_auc": round(bayes, 6),
        "auc_ratio": round(auc / bayes, 6),
        "logloss": round(log_loss(labels, scores), 6),
        "bayes_logloss": round(log_loss(labels, impressions.click_probability), 6),
    }


@contextlib.contextmanager
def _engine_output_to(log: Path) -> Iterator[None]:
    """File descriptor 2 into ``log`` for the block: the processes started meanwhile inherit it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with log.open("ab") as out:
        os.dup2(out.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _peak_rss_mib() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # KiB on Linux


def _print_summary(console: Any, s: dict[str, Any], path: Path) -> None:
    from rich.table import Table

    table = Table(title="WeiFlow demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    served = s["served"]
    table.add_row(
        "served AUC",
        f"{served['auc']:.4f} vs the Bayes-optimal {served['bayes_auc']:.4f} on the same {served['rows']:,} "
        f"impressions of {served['day']}: {s['auc_ratio']:.1%} of the best possible",
    )
    table.add_row("served log loss", f"{served['logloss']:.4f} (Bayes-optimal {served['bayes_logloss']:.4f})")
    table.add_row("holdout AUC", f"{s['auc']:.4f} (Bayes-optimal over all rows {s['bayes_auc']:.4f})")
    table.add_row("log loss", f"{s['logloss']:.4f} (Bayes-optimal {s['bayes_logloss']:.4f})")
    split = ", ".join(f"v{v} {share}%" for v, share in s["traffic"].items())
    table.add_row("model", f"{s['model']} version {s['version']} ({split})")
    table.add_row("prediction", ", ".join(f"{x:.4f}" for x in s["prediction"]["scores"]))
    if s["training_curve"]:
        table.add_row("training curve", s["training_curve"])
    table.add_row("serve it", s["serve"])
    table.add_row("then", s["curl"])
    for name, d in s["datasets"].items():
        table.add_row(f"dataset {name}", f"{d['uri']}\n{d['retention']}")
    table.add_row("console", s["console"])
    table.add_row("Airflow", s["airflow"])
    table.add_row("took", f"{s['seconds']:.0f}s, peak memory {s['peak_rss_mib']:.0f} MiB (largest process)")
    table.add_row("summary", str(path))
    console.print(table)
