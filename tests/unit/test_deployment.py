"""The deployment: notebooks are thin and well-formed, dbx.yml points at real things, schedules
are valid Quartz cron, and the local notebook runner behaves like a Databricks job run."""

from __future__ import annotations

import ast
import inspect
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines import jobs, runtime
from pipelines.config import ConfigError
from pipelines.gold.tables import GOLD_ITEM_FEATURES, GOLD_USER_FEATURES
from pipelines.notebooks import Cell, NotebookError, parse_notebook, run_notebook, widget_names

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
JOB_NOTEBOOKS = (
    "bronze",
    "silver",
    "sessions",
    "gold",
    "quality_report",
    "train",
    "drift",
    "maintain",
    "batch_recommendations",
)
WORKFLOWS = {
    "lakehouse-streaming": ["bronze", "silver", "sessions", "gold"],
    "lakehouse-quality-report": ["quality_report"],
    "lakehouse-train": ["train", "batch_recommendations"],
    "lakehouse-drift": ["drift"],
    "lakehouse-maintain": ["maintain"],
}
# The only calls a job notebook makes besides its one job.
NOTEBOOK_PLUMBING = {
    "dbutils.widgets.text",
    "dbutils.widgets.dropdown",
    "dbutils.widgets.get",
    "dbutils.notebook.exit",
    "json.dumps",
    "print",
}


# -- notebooks -----------------------------------------------------------------------------------
def test_there_is_one_notebook_per_scheduled_job_plus_the_tour() -> None:
    assert {p.stem for p in NOTEBOOKS.glob("*.py")} == {*JOB_NOTEBOOKS, "explore_gold"}
    assert set(jobs.JOBS) == set(JOB_NOTEBOOKS)


@pytest.mark.parametrize("name", [*JOB_NOTEBOOKS, "explore_gold"])
def test_notebook_is_in_databricks_source_format(name: str) -> None:
    path = NOTEBOOKS / f"{name}.py"
    lines = path.read_text().splitlines()
    assert lines[0] == "# Databricks notebook source"
    separators = [i for i, line in enumerate(lines) if "COMMAND" in line]
    assert separators, "a notebook without cells"
    for i in separators:
        assert lines[i] == "# COMMAND ----------", f"line {i + 1}: {lines[i]!r}"
    cells = parse_notebook(path)
    assert len(cells) == len(separators) + 1
    assert [c.number for c in cells] == list(range(1, len(cells) + 1))
    assert cells[0].kind == "markdown", "every notebook first says what it does"
    for cell in cells:
        if cell.kind == "code":
            ast.parse(cell.source)  # no syntax errors
        else:
            assert cell.magic == "%md"


@pytest.mark.parametrize("name", JOB_NOTEBOOKS)
def test_job_notebook_calls_exactly_one_job_with_its_widgets(name: str) -> None:
    cells = parse_notebook(NOTEBOOKS / f"{name}.py")
    trees = [ast.parse(c.source) for c in cells if c.kind == "code"]
    calls = [n for tree in trees for n in ast.walk(tree) if isinstance(n, ast.Call)]
    job_calls = [c for c in calls if _dotted(c.func).startswith("jobs.")]
    assert len(job_calls) == 1, [_dotted(c.func) for c in job_calls]
    call = job_calls[0]
    function = getattr(jobs, _dotted(call.func).removeprefix("jobs."))
    assert function is jobs.JOBS[name]
    assert any(
        isinstance(n, ast.ImportFrom) and n.module == "pipelines" and n.names[0].name == "jobs"
        for tree in trees
        for n in ast.walk(tree)
    )
    # Keyword arguments only, each the widget of the same name.
    assert not call.args
    passed = {kw.arg: _widget_read(kw.value) for kw in call.keywords}
    assert all(widget == arg for arg, widget in passed.items()), passed
    assert list(passed) == widget_names(cells)
    parameters = inspect.signature(function).parameters
    assert set(passed) <= set(parameters), set(passed) - set(parameters)
    required = {p for p, v in parameters.items() if v.default is inspect.Parameter.empty}
    assert required <= set(passed)
    # No logic: no branches, loops or definitions, and no calls beyond widgets, the job, output.
    others = {_dotted(c.func) for c in calls if c is not call}
    assert others <= NOTEBOOK_PLUMBING, others - NOTEBOOK_PLUMBING
    logic = (ast.If, ast.For, ast.While, ast.Try, ast.FunctionDef, ast.ClassDef, ast.Lambda)
    assert not [n for tree in trees for n in ast.walk(tree) if isinstance(n, logic)]


@pytest.mark.parametrize("name", JOB_NOTEBOOKS)
def test_job_notebook_defaults_to_prod_and_exits_with_the_summary(name: str) -> None:
    source = (NOTEBOOKS / f"{name}.py").read_text()
    assert 'dbutils.widgets.text("env", "prod")' in source
    assert source.rstrip().endswith("dbutils.notebook.exit(json.dumps(result))")


def test_the_tour_reads_settings_through_the_lakehouse_runtime_and_uses_catalog_names() -> None:
    source = (NOTEBOOKS / "explore_gold.py").read_text()
    assert "lakehouse(" in source and "load_settings(" not in source and "Catalog" not in source

    for spec in (GOLD_USER_FEATURES, GOLD_ITEM_FEATURES):
        assert f"FROM {spec.name}\n" in source
    for hint in ("lakehouse snapshot create", "lakehouse training-set build", "lakehouse run"):
        assert hint in source


# -- dbx.yml ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "dbx.yml").read_text())
    assert isinstance(data, dict)
    return data


def _tasks(deployment: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for env, environment in deployment["environments"].items():
        for workflow in environment["workflows"]:
            for task in workflow["tasks"]:
                yield env, workflow, task


def test_every_environment_has_the_same_workflows_and_tasks(deployment: dict[str, Any]) -> None:
    assert set(deployment["environments"]) == {"dev", "prod"}
    for environment in deployment["environments"].values():
        shape = {w["name"]: [t["task_key"] for t in w["tasks"]] for w in environment["workflows"]}
        assert shape == WORKFLOWS


def test_environments_differ_only_in_env_cluster_size_secrets_and_pause(
    deployment: dict[str, Any],
) -> None:
    def comparable(env: str) -> dict[str, Any]:
        out = {}
        for workflow in deployment["environments"][env]["workflows"]:
            for task in workflow["tasks"]:
                params = dict(task["notebook_task"]["base_parameters"])
                assert params.pop("env") == env
                out[task["task_key"]] = (
                    task["notebook_task"]["notebook_path"],
                    [d["task_key"] for d in task.get("depends_on", [])],
                    params,
                    task["max_retries"],
                    task["libraries"],
                )
        return out

    assert comparable("dev") == comparable("prod")
    size = {
        env: max(
            c["new_cluster"]["autoscale"]["max_workers"]
            for w in deployment["environments"][env]["workflows"]
            for c in w["job_clusters"]
        )
        for env in ("dev", "prod")
    }
    assert size["dev"] < size["prod"]


def test_every_task_runs_an_existing_notebook_with_its_widgets(deployment: dict[str, Any]) -> None:
    used = set()
    for _env, workflow, task in _tasks(deployment):
        notebook = task["notebook_task"]
        assert notebook["source"] == "GIT" and workflow["git_source"]["git_url"]
        path = REPO / f"{notebook['notebook_path']}.py"
        assert path.is_file(), f"{workflow['name']}.{task['task_key']}: no {path}"
        assert path.stem == task["task_key"]
        used.add(path.stem)
        params = notebook["base_parameters"]
        assert all(isinstance(v, str) for v in params.values()), params
        assert set(params) <= set(widget_names(parse_notebook(path)))
        assert path.stem in jobs.JOBS
    assert used == set(JOB_NOTEBOOKS)


def test_every_task_installs_the_project_wheel_on_its_job_cluster(
    deployment: dict[str, Any],
) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wheel = f"file://dist/{project['name'].replace('-', '_')}-{project['version']}-py3-none-any.whl"
    for _env, workflow, task in _tasks(deployment):
        assert task["libraries"] == [{"whl": wheel}]
        assert task["deployment_config"] == {"no_package": True}
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in workflow["job_clusters"]}
        cluster = clusters[task["job_cluster_key"]]
        assert re.fullmatch(r"\d+\.\d+\.x-scala2\.1[23]", cluster["spark_version"])
        assert int(cluster["spark_version"].split(".")[0]) >= 17, "needs a Spark 4 runtime"
        assert cluster["node_type_id"]
        scale = cluster["autoscale"]
        assert 1 <= scale["min_workers"] <= scale["max_workers"]
        for value in cluster["spark_env_vars"].values():
            assert re.fullmatch(r"\{\{secrets/lakehouse-[a-z]+/[a-z-]+\}\}", value)


def test_every_schedule_is_valid_quartz_and_dev_is_paused(deployment: dict[str, Any]) -> None:
    for env, environment in deployment["environments"].items():
        for workflow in environment["workflows"]:
            schedule = workflow["schedule"]
            assert quartz_errors(schedule["quartz_cron_expression"]) == [], workflow["name"]
            assert schedule["timezone_id"] == "UTC"
            assert schedule["pause_status"] == ("PAUSED" if env == "dev" else "UNPAUSED")
            assert workflow["max_concurrent_runs"] == 1


def test_the_streaming_workflow_runs_bronze_silver_sessions_gold_in_order(
    deployment: dict[str, Any],
) -> None:
    for environment in deployment["environments"].values():
        workflow = next(w for w in environment["workflows"] if w["name"] == "lakehouse-streaming")
        edges = {
            (d["task_key"], t["task_key"])
            for t in workflow["tasks"]
            for d in t.get("depends_on", [])
        }
        assert edges == {("bronze", "silver"), ("silver", "sessions"), ("sessions", "gold")}
        assert topological_order(edges) == ["bronze", "silver", "sessions", "gold"]
        assert {t["notebook_task"]["base_parameters"]["trigger"] for t in workflow["tasks"]} == {
            "available-now"
        }
        assert workflow["schedule"]["quartz_cron_expression"] == "0 0/5 * * * ?"


def test_dependencies_name_tasks_of_the_same_workflow_without_cycles(
    deployment: dict[str, Any],
) -> None:
    for environment in deployment["environments"].values():
        for workflow in environment["workflows"]:
            keys = [t["task_key"] for t in workflow["tasks"]]
            assert len(keys) == len(set(keys))
            edges = {
                (d["task_key"], t["task_key"])
                for t in workflow["tasks"]
                for d in t.get("depends_on", [])
            }
            assert {a for a, _ in edges} <= set(keys)
            assert set(topological_order(edges)) == {k for e in edges for k in e}


def topological_order(edges: set[tuple[str, str]]) -> list[str]:
    """Kahn's algorithm; fails on a cycle."""
    nodes = sorted({n for e in edges for n in e})
    incoming = {n: {a for a, b in edges if b == n} for n in nodes}
    order: list[str] = []
    while len(order) < len(nodes):
        ready = [n for n in nodes if n not in order and incoming[n] <= set(order)]
        assert ready, f"cycle among {sorted(set(nodes) - set(order))}"
        order.append(ready[0])
    return order


# -- a Quartz cron validator -----------------------------------------------------------------------
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
_FIELDS: tuple[tuple[str, int, int, list[str]], ...] = (
    ("seconds", 0, 59, []),
    ("minutes", 0, 59, []),
    ("hours", 0, 23, []),
    ("day-of-month", 1, 31, []),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 1, 7, _DAYS),
    ("year", 1970, 2099, []),
)


def quartz_errors(expression: str) -> list[str]:
    """What is wrong with a Quartz cron expression (empty when valid): 6 or 7 fields, ``?`` in
    exactly one of day-of-month / day-of-week, values, ranges, steps and lists in bounds."""
    fields = expression.split()
    if len(fields) not in (6, 7):
        return [f"{len(fields)} fields; Quartz needs 6 or 7 (sec min hour dom month dow [year])"]
    errors = []
    dom, dow = fields[3], fields[5]
    if (dom == "?") == (dow == "?"):
        errors.append("exactly one of day-of-month and day-of-week must be '?'")
    for text, (name, low, high, names) in zip(fields, _FIELDS, strict=False):
        if text == "?" and name in ("day-of-month", "day-of-week"):
            continue
        if name == "day-of-month" and re.fullmatch(r"L(-\d{1,2})?|LW|\d{1,2}W", text):
            continue
        if name == "day-of-week" and re.fullmatch(r"[1-7](L|#[1-5])", text):
            continue
        errors += [f"{name}: {e}" for e in _field_errors(text, low, high, names)]
    return errors


def _field_errors(text: str, low: int, high: int, names: list[str]) -> list[str]:
    def value(token: str) -> int | None:
        if token.upper() in names:
            return names.index(token.upper()) + low
        if token.isdigit() and low <= int(token) <= high:
            return int(token)
        return None

    errors = []
    for item in text.split(","):
        base, _, step = item.partition("/")
        if step and not (step.isdigit() and 0 < int(step) <= high):
            errors.append(f"step {step!r} in {item!r}")
        if base == "*":
            continue
        start, dash, end = base.partition("-")
        first = value(start)
        if first is None:
            errors.append(f"{start!r} is not within {low}-{high}")
        elif dash:
            last = value(end)
            if last is None:
                errors.append(f"{end!r} is not within {low}-{high}")
            elif last < first:
                errors.append(f"range {base!r} runs backwards")
    return errors


@pytest.mark.parametrize(
    "expression",
    [
        "0 0/5 * * * ?",
        "0 0 2 * * ?",
        "0 30 3 ? * MON-FRI",
        "0 15 10 L * ?",
        "0 0 12 ? * 6#3",
        "0 0,30 8-18 * JAN-MAR ? 2027",
        "*/10 * * * * ?",
    ],
)
def test_quartz_validator_accepts(expression: str) -> None:
    assert quartz_errors(expression) == []


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("0 */5 * * *", "5 fields"),  # unix cron
        ("0 0 2 * * *", "exactly one of"),  # no '?'
        ("0 0 2 ? * ?", "exactly one of"),  # two '?'
        ("0 60 * * * ?", "minutes: '60'"),
        ("0 0 24 * * ?", "hours: '24'"),
        ("0 0 0 0 * ?", "day-of-month: '0'"),
        ("0 0 0 ? * 8", "day-of-week: '8'"),
        ("0 0 0 * 13 ?", "month: '13'"),
        ("0 0/0 * * * ?", "step '0'"),
        ("0 30-10 * * * ?", "runs backwards"),
        ("0 0 ? * * ?", "hours: '?'"),
        ("0 0 0 * FOO ?", "month: 'FOO'"),
    ],
)
def test_quartz_validator_rejects(expression: str, error: str) -> None:
    assert any(error in e for e in quartz_errors(expression)), quartz_errors(expression)


# -- the local runner ------------------------------------------------------------------------------
def notebook(tmp_path: Path, *cells: str, header: str = "# Databricks notebook source") -> Path:
    path = tmp_path / "nb.py"
    path.write_text(header + "\n" + "\n\n# COMMAND ----------\n\n".join(cells) + "\n")
    return path


WIDGETS = """dbutils.widgets.text("env", "prod")
dbutils.widgets.dropdown("mode", "fast", ["fast", "slow"])
dbutils.widgets.text("note", "default note")"""


def test_parse_splits_cells_and_knows_markdown_magic_and_code(tmp_path: Path) -> None:
    path = notebook(
        tmp_path, "# MAGIC %md\n# MAGIC # Title\n# MAGIC", "x = 1", "# MAGIC %pip install x"
    )
    cells = parse_notebook(path)
    assert cells == [
        Cell(1, "markdown", "%md\n# Title\n\n", 2, "%md"),
        Cell(2, "code", "x = 1\n", 8, None),
        Cell(3, "magic", "%pip install x\n", 12, "%pip"),
    ]


def test_parse_rejects_a_file_without_the_header_and_mixed_cells(tmp_path: Path) -> None:
    with pytest.raises(NotebookError, match="first line must be '# Databricks notebook source'"):
        parse_notebook(notebook(tmp_path, "x = 1", header="# a plain script"))
    with pytest.raises(NotebookError, match=r"cell 2 \(line 6\) mixes '# MAGIC' lines"):
        parse_notebook(notebook(tmp_path, "x = 1", "# MAGIC %md\nprint(1)"))


def test_widgets_take_defaults_then_params_then_env(tmp_path: Path) -> None:
    path = notebook(
        tmp_path,
        "# MAGIC %md\n# MAGIC skipped",
        WIDGETS,
        "import json\n"
        'values = {n: dbutils.widgets.get(n) for n in ("env", "mode", "note")}\n'
        "print(values)\n"
        "dbutils.notebook.exit(json.dumps(values))",
        'raise RuntimeError("never runs: the notebook exited")',
    )
    result = run_notebook(path, "test", {"mode": "slow"}, echo=False)
    expected = {"env": "test", "mode": "slow", "note": "default note"}
    assert result.exit_json() == expected
    assert result.widgets == expected
    assert (result.cells_run, result.cells_skipped) == (2, 1)
    assert result.output == f"{expected}\n"


def test_unknown_params_and_bad_choices_are_errors_naming_the_widgets(tmp_path: Path) -> None:
    path = notebook(tmp_path, WIDGETS)
    with pytest.raises(NotebookError, match=r"no widget 'moed'; its widgets are: env, mode, note"):
        run_notebook(path, "test", {"moed": "slow"}, echo=False)
    with pytest.raises(NotebookError, match=r"'mode' value 'medium' is not one of .*fast, slow"):
        run_notebook(path, "test", {"mode": "medium"}, echo=False)
    with pytest.raises(NotebookError, match="env is given twice"):
        run_notebook(path, "test", {"env": "prod"}, echo=False)


def test_a_failing_cell_is_named_with_its_line_and_the_cause_is_chained(tmp_path: Path) -> None:
    path = notebook(tmp_path, "x = 1", "y = 2\nz = x / 0")
    with pytest.raises(NotebookError, match=r"nb.py cell 2 \(line 6\) failed: ZeroDivisionError"):
        run_notebook(path, "test", echo=False)
    try:
        run_notebook(path, "test", echo=False)
    except NotebookError as exc:
        assert isinstance(exc.__cause__, ZeroDivisionError)
        # The traceback points at the notebook file's own line numbers.
        assert exc.__cause__.__traceback__ is not None
        frames = [f for f in _frames(exc.__cause__.__traceback__) if f[0] == str(path)]
        assert frames == [(str(path), 7)]


def test_a_syntax_error_is_reported_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = notebook(tmp_path, f"open({str(marker)!r}, 'w').close()", "x = (")
    with pytest.raises(NotebookError, match=r"cell 2 \(line 6\) is not valid Python"):
        run_notebook(path, "test", echo=False)
    assert not marker.exists()


def test_exit_needs_a_string_and_other_dbutils_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(NotebookError, match=r"TypeError: .*pass json.dumps\(result\)"):
        run_notebook(notebook(tmp_path, "dbutils.notebook.exit({'a': 1})"), "test", echo=False)
    with pytest.raises(NotebookError, match=r"dbutils.secrets is not available .* locally"):
        run_notebook(notebook(tmp_path, "dbutils.secrets.get('s', 'k')"), "test", echo=False)
    with pytest.raises(NotebookError, match="no widget named 'env' is defined"):
        run_notebook(notebook(tmp_path, "dbutils.widgets.get('env')"), "test", echo=False)


def test_display_prints_the_head_of_a_pandas_frame(tmp_path: Path) -> None:
    path = notebook(
        tmp_path, "import pandas as pd\ndisplay(pd.DataFrame({'n': range(30)}))", "print(spark)"
    )
    result = run_notebook(path, "test", echo=False)
    lines = result.output.splitlines()
    assert lines[0].split() == ["n"] and lines[20].split() == ["19", "19"]
    assert "built from the environment's settings on first use" in lines[-1]  # still lazy


def test_the_notebook_and_the_jobs_it_calls_share_the_settings(tmp_path: Path) -> None:
    path = notebook(
        tmp_path,
        'dbutils.widgets.text("env", "prod")',
        "from pipelines import jobs\n"
        'settings = jobs.settings_for(dbutils.widgets.get("env"))\n'
        "dbutils.notebook.exit(settings.storage.root)",
    )
    result = run_notebook(
        path, "test", overrides={"storage": {"root": str(tmp_path / "lake")}}, echo=False
    )
    assert result.exit_value == str(tmp_path / "lake")


# -- job parameters --------------------------------------------------------------------------------
def test_job_parameters_accept_widget_strings() -> None:
    settings = jobs.settings_for("test")
    assert jobs._trigger(settings, "available-now", "").mode == "available-now"
    assert jobs._trigger(settings, "processing-time", "30s").interval == "30 seconds"
    assert jobs._trigger(settings, "processing-time", "500ms").interval == "500 milliseconds"
    assert jobs._trigger(settings, "config", None) == settings.streaming.trigger
    assert (jobs._flag("x", "true"), jobs._flag("x", "False"), jobs._flag("x", "")) == (
        True,
        False,
        False,
    )
    assert (jobs._optional("snapshot", ""), jobs._optional("snapshot", " s1 ")) == (None, "s1")
    assert (jobs._integer("k", "10"), jobs._number("timeout", ""), jobs._number("t", "2.5")) == (
        10,
        None,
        2.5,
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: jobs._trigger(s, "continuous", None), "not one of available-now"),
        (lambda s: jobs._trigger(s, "available-now", "30s"), "only applies to trigger proc"),
        (lambda s: jobs._trigger(s, "processing-time", "soon"), "is not a duration"),
        (lambda s: jobs._flag("dry_run", "maybe"), "dry_run='maybe' is not a boolean"),
        (lambda s: jobs._integer("k", "ten"), "k='ten' is not a whole number"),
    ],
)
def test_bad_job_parameters_name_the_parameter(call: Any, message: str) -> None:

    with pytest.raises(ConfigError, match=message):
        call(jobs.settings_for("test"))


@pytest.mark.parametrize(
    ("job", "kwargs", "message"),
    [
        ("bronze", {"trigger": "sometimes"}, "trigger 'sometimes' is not one of"),
        ("silver", {"timeout": "forever"}, "timeout='forever' is not a number"),
        ("gold", {"trigger": "available-now", "interval": "5s"}, "only applies to"),
        ("train", {"seed": "x"}, "seed='x' is not a whole number"),
        ("drift", {"retrain_on_drift": "maybe"}, "is not a boolean"),
        ("batch_recommendations", {"k": "1.5"}, "k='1.5' is not a whole number"),
    ],
)
def test_bad_parameters_fail_before_spark_starts(
    job: str, kwargs: dict[str, str], message: str
) -> None:

    def no_spark(_settings: Any) -> Any:
        raise AssertionError("Spark was started before the parameters were checked")

    settings = jobs.settings_for("test")
    factory = runtime.LakehouseFactory(load_settings=lambda _env: settings, spark=no_spark)
    with runtime.using(factory), pytest.raises(ConfigError, match=message):
        jobs.JOBS[job]("test", **kwargs)


def test_the_command_line_maps_options_onto_the_job_and_prints_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake(env: str, snapshot: str | None = None, retrain_on_drift: bool | str = False) -> Any:
        seen.update(env=env, snapshot=snapshot, retrain_on_drift=retrain_on_drift)
        return {"job": "drift", "env": env}

    monkeypatch.setitem(jobs.JOBS, "drift", fake)
    assert jobs.main(["drift", "--env", "prod", "--retrain-on-drift", "true"]) == 0
    assert seen == {"env": "prod", "snapshot": None, "retrain_on_drift": "true"}
    assert capsys.readouterr().out.strip() == '{"job": "drift", "env": "prod"}'
    with pytest.raises(SystemExit):
        jobs.main(["drift"])  # --env is required
    assert "--env" in capsys.readouterr().err


def test_a_known_failure_is_one_error_line_and_exit_code_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert jobs.main(["maintain", "--env", "nowhere"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown environment 'nowhere'") and err.count("\n") == 1


# -- helpers ---------------------------------------------------------------------------------------
def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "<expr>"


def _widget_read(node: ast.AST) -> str | None:
    """``"name"`` when ``node`` is ``dbutils.widgets.get("name")``."""
    if (
        isinstance(node, ast.Call)
        and _dotted(node.func) == "dbutils.widgets.get"
        and isinstance(node.args[0], ast.Constant)
    ):
        return str(node.args[0].value)
    return None


def _frames(tb: Any) -> list[tuple[str, int]]:
    out = []
    while tb is not None:
        out.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    return out
