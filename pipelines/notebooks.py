"""Run a Databricks source-format notebook locally, the way a job cluster would.

A notebook file starts with ``# Databricks notebook source`` and separates its cells with
``# COMMAND ----------``; ``# MAGIC`` lines make markdown (``%md``) or other magic cells. The
runner executes the Python cells in order in one namespace with a small stand-in for what
Databricks provides: ``dbutils.widgets`` (text, dropdown, combobox, multiselect, get,
getArgument, getAll, remove, removeAll), ``dbutils.notebook.exit``, ``display`` and a ``spark``
session built from the environment's settings on first use. Markdown and magic cells are skipped.

Widget values come from the notebook's defaults, overridden by ``params`` and by ``env`` (the
``env`` widget). The jobs the notebook calls (``pipelines.jobs``) get the same settings and the
same SparkSession through the runtime's factory (``pipelines.runtime.using``).
"""

from __future__ import annotations

import ast
import io
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING, Any, Literal, TextIO

from pyspark.sql import DataFrame

from pipelines.config import Settings, load_settings
from pipelines.runtime import LakehouseFactory, using
from pipelines.spark import build_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"
MAGIC = "# MAGIC"
WIDGET_KINDS = ("text", "dropdown", "combobox", "multiselect")
_CAMEL_CASE = {"getArgument": "get_argument", "getAll": "get_all", "removeAll": "remove_all"}
DISPLAY_ROWS = 20

CellKind = Literal["code", "markdown", "magic"]


class NotebookError(RuntimeError):
    """A notebook could not be parsed or run; the message names the notebook and the cell."""


@dataclass(frozen=True)
class Cell:
    """One cell of a notebook: 1-based ``number`` as the Databricks UI counts them, ``line`` the
    file line its source starts on, ``magic`` the magic command (``%md``…) of a magic cell."""

    number: int
    kind: CellKind
    source: str
    line: int
    magic: str | None = None


@dataclass
class NotebookResult:
    """What a local run did: widget values used, cells run, the exit value, the printed output."""

    path: Path
    env: str
    widgets: dict[str, str]
    cells_run: int
    cells_skipped: int
    exit_value: str | None
    output: str
    seconds: float

    def exit_json(self) -> Any:
        """The exit value parsed as JSON (job notebooks exit with their summary)."""
        if self.exit_value is None:
            raise NotebookError(f"{self.path} did not call dbutils.notebook.exit(...)")
        try:
            return json.loads(self.exit_value)
        except json.JSONDecodeError as exc:
            raise NotebookError(
                f"{self.path} exited with {self.exit_value[:80]!r}, which is not JSON ({exc})"
            ) from None


def parse_notebook(path: Path) -> list[Cell]:
    """The cells of a source-format notebook, in order.

    Raises:
        NotebookError: the file is missing, lacks the header line, or mixes ``# MAGIC`` lines
            with Python in one cell.
    """
    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"notebook {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].rstrip() != HEADER:
        raise NotebookError(
            f"{path} is not a Databricks source-format notebook: its first line must be "
            f"{HEADER!r} (export it from Databricks as 'Source File')"
        )
    cells: list[Cell] = []
    chunk: list[tuple[int, str]] = []
    for number, text in enumerate(lines[1:], start=2):
        if text.strip() == SEPARATOR:
            cells.append(_cell(path, len(cells) + 1, chunk))
            chunk = []
        else:
            chunk.append((number, text))
    cells.append(_cell(path, len(cells) + 1, chunk))
    return cells


def run_notebook(
    path: Path,
    env: str,
    params: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    spark: SparkSession | None = None,
    echo: bool = True,
) -> NotebookResult:
    """Run the notebook's Python cells in order, as a Databricks job run would.

    Args:
        env: the environment: overrides the ``env`` widget and selects ``conf/<env>.yaml``.
        params: widget values (``name -> value``) overriding the notebook's defaults.
        overrides: nested settings merged over the environment's (``load_settings``), e.g. a
            temporary ``storage.root`` in tests.
        spark: a session to use instead of building one from the settings on first use.
        echo: also print what the notebook prints (it is captured in ``output`` either way).

    Raises:
        NotebookError: a parse error, an unknown parameter, or a failing cell (the original
            exception is chained).
    """
    path = Path(path)
    started = time.perf_counter()
    cells = parse_notebook(path)
    programs = [(cell, _compile(path, cell)) for cell in cells if cell.kind == "code"]
    params = dict(params or {})
    _check_params(path, [c for c, _ in programs], params, env)
    session = _Session(env, overrides, spark)
    dbutils = DBUtils(path, {**params, "env": env})
    namespace: dict[str, Any] = {
        "__name__": "__main__",
        "__file__": str(path),
        "dbutils": dbutils,
        "display": display,
        "spark": spark if spark is not None else LazySpark(session.spark),
    }
    factory = LakehouseFactory(load_settings=session.settings_for, spark=session.spark_for)
    output = _Tee(sys.stdout) if echo else io.StringIO()
    ran = 0
    with using(factory), redirect_stdout(output):
        for cell, program in programs:
            try:
                exec(program, namespace)
            except NotebookExit:
                ran += 1
                break
            except Exception as exc:
                raise NotebookError(
                    f"{path} cell {cell.number} (line {cell.line}) failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            ran += 1
    return NotebookResult(
        path=path,
        env=env,
        widgets=dbutils.widgets.get_all(),
        cells_run=ran,
        cells_skipped=len(cells) - len(programs),
        exit_value=dbutils.notebook.exit_value,
        output=output.getvalue(),
        seconds=round(time.perf_counter() - started, 2),
    )


def widget_names(cells: Sequence[Cell]) -> list[str]:
    """Widgets the code cells define with a literal name, in order of definition."""
    names: list[str] = []
    for cell in cells:
        if cell.kind != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            name = _widget_definition(node)
            if name is not None and name not in names:
                names.append(name)
    return names


# -- the Databricks stand-ins ------------------------------------------------------------------
class NotebookExit(BaseException):
    """Raised by ``dbutils.notebook.exit`` to stop the run. Like ``SystemExit`` it is not an
    ``Exception``, so an ``except Exception`` in a notebook does not swallow it."""


class Widgets:
    """``dbutils.widgets``: defaults from the notebook, values from the run's parameters."""

    def __init__(self, path: Path, values: Mapping[str, str]) -> None:
        self._path = path
        self._given = dict(values)
        self._values: dict[str, str] = {}

    def text(self, name: str, default_value: str, label: str | None = None) -> None:
        self._values[name] = str(self._given.get(name, default_value))

    def dropdown(
        self, name: str, default_value: str, choices: Sequence[str], label: str | None = None
    ) -> None:
        self._check_choice(name, default_value, choices, "default")
        value = str(self._given.get(name, default_value))
        self._check_choice(name, value, choices, "value")
        self._values[name] = value

    def combobox(
        self, name: str, default_value: str, choices: Sequence[str], label: str | None = None
    ) -> None:
        self._values[name] = str(self._given.get(name, default_value))

    def multiselect(
        self, name: str, default_value: str, choices: Sequence[str], label: str | None = None
    ) -> None:
        value = str(self._given.get(name, default_value))
        for part in filter(None, value.split(",")):
            self._check_choice(name, part, choices, "value")
        self._values[name] = value

    def get(self, name: str) -> str:
        if name not in self._values:
            defined = ", ".join(self._values) or "none yet"
            raise NotebookError(
                f"{self._path}: no widget named {name!r} is defined (defined: {defined}); "
                f"define it with dbutils.widgets.text({name!r}, default) before reading it"
            )
        return self._values[name]

    def get_argument(self, name: str, default_value: str | None = None) -> str | None:
        return self._values.get(name, default_value)

    def get_all(self) -> dict[str, str]:
        return dict(self._values)

    def remove(self, name: str) -> None:
        self._values.pop(name, None)

    def remove_all(self) -> None:
        self._values.clear()

    def __getattr__(self, name: str) -> Any:
        # Databricks spells these in camelCase (getArgument, getAll, removeAll).
        if name in _CAMEL_CASE:
            return getattr(self, _CAMEL_CASE[name])
        raise AttributeError(
            f"dbutils.widgets.{name} is not available locally (supported: "
            f"{', '.join([*WIDGET_KINDS, 'get', *_CAMEL_CASE, 'remove'])})"
        )

    def _check_choice(self, name: str, value: str, choices: Sequence[str], what: str) -> None:
        if value not in choices:
            raise NotebookError(
                f"{self._path}: widget {name!r} {what} {value!r} is not one of its choices "
                f"({', '.join(map(str, choices))})"
            )


class NotebookControl:
    """``dbutils.notebook``: ``exit(value)`` ends the run with a string result."""

    def __init__(self) -> None:
        self.exit_value: str | None = None

    def exit(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(
                f"dbutils.notebook.exit takes a string, not {type(value).__name__}; "
                "pass json.dumps(result)"
            )
        self.exit_value = value
        raise NotebookExit(value)

    def run(self, path: str, timeout_seconds: int = 0, arguments: Any = None) -> str:
        raise NotebookError(
            f"dbutils.notebook.run({path!r}) is not available locally; call the job function in "
            "pipelines.jobs instead"
        )


class DBUtils:
    """The part of ``dbutils`` job notebooks use; anything else fails with a clear message."""

    def __init__(self, path: Path, values: Mapping[str, str]) -> None:
        self.widgets = Widgets(path, values)
        self.notebook = NotebookControl()

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"dbutils.{name} is not available when running a notebook locally; notebooks should "
            "only read widgets and call pipelines (secrets come from ${ENV} in conf/<env>.yaml)"
        )


def display(obj: Any, rows: int = DISPLAY_ROWS) -> None:
    """Databricks' ``display``: print the first rows of a Spark or pandas DataFrame."""

    if isinstance(obj, DataFrame):
        obj.show(rows, truncate=False)
        return
    head = getattr(obj, "head", None)
    if callable(head) and hasattr(obj, "to_string"):
        print(head(rows).to_string())
        return
    print(obj)


class LazySpark:
    """Stands for ``spark`` until first used; then builds the session and delegates to it."""

    def __init__(self, factory: Callable[[], SparkSession]) -> None:
        self._factory = factory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory(), name)

    def __repr__(self) -> str:
        return "<spark: built from the environment's settings on first use>"


# -- internals ---------------------------------------------------------------------------------
class _Session:
    """The run's settings and SparkSession, each made once, shared by notebook and jobs."""

    def __init__(
        self, env: str, overrides: Mapping[str, Any] | None, spark: SparkSession | None
    ) -> None:
        self.env = env
        self.overrides = dict(overrides or {})
        self._settings: dict[str, Settings] = {}
        self._spark = spark

    def settings_for(self, env: str) -> Settings:
        if env not in self._settings:
            self._settings[env] = load_settings(env, overrides=self.overrides or None)
        return self._settings[env]

    def spark_for(self, settings: Settings) -> SparkSession:
        if self._spark is None:
            self._spark = build_spark(settings)
        return self._spark

    def spark(self) -> SparkSession:
        return self.spark_for(self.settings_for(self.env))


def _cell(path: Path, number: int, chunk: list[tuple[int, str]]) -> Cell:
    while chunk and not chunk[0][1].strip():
        chunk = chunk[1:]
    while chunk and not chunk[-1][1].strip():
        chunk = chunk[:-1]
    first = chunk[0][0] if chunk else 0
    texts = [text for _, text in chunk]
    magic_lines = [t for t in texts if t.startswith(MAGIC)]
    if not magic_lines:
        return Cell(number, "code", "\n".join(texts) + "\n", first)
    if len(magic_lines) != len([t for t in texts if t.strip()]):
        raise NotebookError(
            f"{path} cell {number} (line {first}) mixes '# MAGIC' lines with Python; "
            "put the magic command in a cell of its own"
        )
    body = [t[len(MAGIC) :].removeprefix(" ") for t in texts]
    command = body[0].split(maxsplit=1)[0] if body[0].strip() else ""
    kind: CellKind = "markdown" if command in ("%md", "%md-sandbox") else "magic"
    return Cell(number, kind, "\n".join(body) + "\n", first, magic=command or None)


def _compile(path: Path, cell: Cell) -> CodeType:
    try:
        tree = ast.parse(cell.source, filename=str(path))
    except SyntaxError as exc:
        line = cell.line + (exc.lineno or 1) - 1
        raise NotebookError(
            f"{path} cell {cell.number} (line {line}) is not valid Python: {exc.msg}"
        ) from None
    ast.increment_lineno(tree, cell.line - 1)
    return compile(tree, str(path), "exec")


def _check_params(path: Path, cells: Sequence[Cell], params: Mapping[str, str], env: str) -> None:
    known = widget_names(cells)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise NotebookError(
            f"{path} has no widget {', '.join(map(repr, unknown))}; its widgets are: "
            f"{', '.join(known) or 'none'}"
        )
    if "env" in params and params["env"] != env:
        raise NotebookError(
            f"env is given twice ({env!r} and param env={params['env']!r}); pass it once"
        )


def _widget_definition(node: ast.AST) -> str | None:
    """``"name"`` for a ``dbutils.widgets.<kind>("name", ...)`` call, else None."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    if not (
        isinstance(func, ast.Attribute)
        and func.attr in WIDGET_KINDS
        and isinstance(func.value, ast.Attribute)
        and func.value.attr == "widgets"
        and isinstance(func.value.value, ast.Name)
        and func.value.value.id == "dbutils"
    ):
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


class _Tee(io.StringIO):
    """Captures what is printed and passes it on to the terminal as well."""

    def __init__(self, terminal: TextIO) -> None:
        super().__init__()
        self.terminal = terminal

    def write(self, text: str) -> int:
        self.terminal.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.terminal.flush()
