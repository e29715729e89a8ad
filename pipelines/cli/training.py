"""``lakehouse``: Training sets, features, training, recommendations and drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from pipelines.cli.common import (
    EnvOption,
    JsonOption,
    app,
    err,
    friendly_errors,
    out,
)
from pipelines.config import ConfigError, parse_duration
from pipelines.gold.features import features_markdown
from pipelines.monitoring.drift_job import check_drift
from pipelines.runtime import lakehouse
from pipelines.training.recommendations import write_recommendations
from pipelines.training.sets import build_training_set, training_sets
from pipelines.training.train import champion_model, train

training_app = typer.Typer(help="Point-in-time training sets.", no_args_is_help=True)
app.add_typer(training_app, name="training-set")
features_app = typer.Typer(help="Feature definitions.", no_args_is_help=True)
app.add_typer(features_app, name="features")
drift_app = typer.Typer(help="Feature drift against the champion's snapshot.", no_args_is_help=True)
app.add_typer(drift_app, name="drift")


@training_app.command("build")
@friendly_errors
def training_set_build(
    snapshot: Annotated[str, typer.Option(help="Snapshot whose versions are read.")],
    labels: Annotated[
        str, typer.Option(help="Outcome that makes a positive: purchase | click.")
    ] = "purchase",
    horizon: Annotated[
        str, typer.Option(help="Outcome window after the exposure, e.g. 24h.")
    ] = "24h",
    seed: Annotated[int, typer.Option(help="Seed of the negative sampling.")] = 42,
    negatives: Annotated[int, typer.Option(min=1, help="Sampled negatives per positive.")] = 4,
    name: Annotated[
        str | None, typer.Option(help="Training set name (default from the inputs).")
    ] = None,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build a point-in-time training set: silver labels, features strictly before each label."""

    if labels not in ("purchase", "click"):
        raise ConfigError(f"--labels must be purchase or click, not {labels!r}")
    try:
        parse_duration(horizon)
    except ValueError as exc:
        raise ConfigError(f"--horizon: {exc}") from None
    lake = lakehouse(env)
    settings = lake.settings
    result = build_training_set(
        lake.spark,
        settings,
        snapshot=snapshot,
        label_event=labels,
        horizon=horizon,
        seed=seed,
        negatives_per_positive=negatives,
        name=name,
    )
    if as_json:
        print(json.dumps(result.__dict__))
        return
    out.print(
        f"training set [bold]{result.name}[/]: {result.rows:,} rows "
        f"({result.positives:,} positives) "
        f"from snapshot {result.snapshot}; digest {result.digest}"
    )
    out.print(
        "  read " + ", ".join(f"{t}@v{v}" for t, v in sorted(result.versions.items())),
        highlight=False,
    )


@training_app.command("list")
@friendly_errors
def training_set_list(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """Every training set built, newest first."""

    rows = training_sets(lakehouse(env).catalog)
    if as_json:
        print(json.dumps({"training_sets": rows}, default=str))
        return
    table = Table("name", "snapshot", "labels", "rows", "positives", "digest")
    for row in rows:
        table.add_row(
            str(row["name"]),
            str(row["snapshot"]),
            f"{row['label_event']} / {row['horizon']}",
            f"{row['rows']:,}",
            f"{row['positives']:,}",
            str(row["digest"])[:16] + "…",
        )
    out.print(table)


@features_app.command("docs")
@friendly_errors
def features_docs(
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the Markdown.")] = Path(
        "docs/FEATURES.md"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 if the file is out of date.")
    ] = False,
) -> None:
    """Write docs/FEATURES.md from the feature definitions (or check it is current)."""

    text = features_markdown()
    if check:
        current = out_file.read_text() if out_file.is_file() else ""
        if current != text:
            err.print(f"[red]{out_file} is out of date[/]; run `lakehouse features docs`")
            raise typer.Exit(1)
        out.print(f"{out_file} is up to date")
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text)
    out.print(f"wrote {out_file}")


@app.command("train")
@friendly_errors
def train_cmd(
    snapshot: Annotated[str, typer.Option(help="Snapshot to train from.")],
    seed: Annotated[int, typer.Option(help="Seed (training set negatives).")] = 42,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Retrain the recommender from a snapshot, log it to MLflow, register it, promote if better."""

    lake = lakehouse(env)
    settings = lake.settings
    run = train(lake.spark, settings, snapshot=snapshot, seed=seed)
    if as_json:
        print(json.dumps(run.__dict__))
        return
    k = settings.mlflow.k
    table = Table(
        "metric", "item-item model", "popularity baseline", title=f"MLflow run {run.run_id}"
    )
    for name, value in run.metrics.items():
        table.add_row(name, f"{value:.4f}", f"{run.baseline[name]:.4f}")
    out.print(table)
    verdict = "[green]promoted to champion[/]" if run.promoted else "[yellow]kept as challenger[/]"
    against = (
        f" (champion NDCG@{k}: {run.champion_ndcg:.4f})" if run.champion_ndcg is not None else ""
    )
    out.print(f"{run.model_name} v{run.model_version}: {verdict}{against}")
    out.print(
        "inputs: " + ", ".join(f"{t}@v{v}" for t, v in sorted(run.versions.items())),
        highlight=False,
    )


@app.command("recommend")
@friendly_errors
def recommend_cmd(
    user: Annotated[str | None, typer.Option("--user", help="User to recommend for.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="How many items.")] = 10,
    batch: Annotated[
        bool, typer.Option("--batch", help="Write gold.recommendations for every active user.")
    ] = False,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """Top-k items for a user from the champion model (unknown users: cold-start fallback)."""

    if (user is None) == (not batch):
        raise ConfigError("pass --user USER, or --batch to write gold.recommendations")
    lake = lakehouse(env)
    settings = lake.settings
    if batch:
        written = write_recommendations(lake.spark, settings, k)
        if as_json:
            print(json.dumps(written))
        else:
            out.print(
                f"gold.recommendations: {written['users']:,} users x {k} items from "
                f"{written['model_name']} v{written['model_version']} "
                f"(table version {written['table_version']})"
            )
        return
    try:
        model, version = champion_model(settings)
    except LookupError as exc:
        raise ConfigError(str(exc)) from None
    result = model.predict(pd.DataFrame({"user_id": [user], "k": [k]}))
    cold = bool(result["cold_start"].iloc[0]) if len(result) else True
    if as_json:
        print(
            json.dumps(
                {
                    "user_id": user,
                    "model_version": version,
                    "cold_start": cold,
                    "items": result["item_id"].tolist(),
                }
            )
        )
        return
    title = f"top {k} for {user} (model v{version}{', cold start: popular items' if cold else ''})"
    table = Table("rank", "item", title=title)
    for row in result.itertuples():
        table.add_row(str(row.rank), str(row.item_id))
    out.print(table)


@drift_app.command("check")
@friendly_errors
def drift_check(
    snapshot: Annotated[
        str | None, typer.Option(help="Reference snapshot (default: the champion's).")
    ] = None,
    retrain_on_drift: Annotated[
        bool, typer.Option("--retrain-on-drift", help="Snapshot and retrain when a feature drifts.")
    ] = False,
    env: EnvOption = None,
    as_json: JsonOption = False,
) -> None:
    """PSI of gold.user_features now vs. the reference snapshot; writes quality.drift_results."""

    lake = lakehouse(env)
    settings = lake.settings
    try:
        report = check_drift(
            lake.spark, settings, snapshot=snapshot, retrain_on_drift=retrain_on_drift
        )
    except LookupError as exc:
        raise ConfigError(str(exc)) from None
    if as_json:
        print(
            json.dumps(
                {
                    "reference_snapshot": report.reference_snapshot,
                    "reference_version": report.reference_version,
                    "current_version": report.current_version,
                    "drifted": report.drifted,
                    "features": [f.__dict__ for f in report.features],
                    "retrained": report.retrained,
                }
            )
        )
        return
    table = Table(
        "feature",
        "PSI",
        "status",
        "reference mean",
        "current mean",
        title=f"drift vs snapshot {report.reference_snapshot} (gold.user_features "
        f"v{report.reference_version} -> v{report.current_version})",
    )
    colour = {"ok": "green", "warn": "yellow", "drift": "red", "skipped": "dim"}
    for f in report.features:
        table.add_row(
            f.feature,
            f"{f.psi:.4f}",
            f"[{colour.get(f.status, 'white')}]{f.status}[/]",
            "-" if f.reference_mean is None else f"{f.reference_mean:.3f}",
            "-" if f.current_mean is None else f"{f.current_mean:.3f}",
        )
    out.print(table)
    if report.retrained:
        out.print(
            f"retrained from snapshot {report.retrained['snapshot']}: "
            f"v{report.retrained['model_version']} ({report.retrained['alias']})"
        )
