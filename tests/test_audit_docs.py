"""README.md checked against the code it describes: the settings table against the
settings model, the CLI table against the command tree, the HTTP table against the app's
routes, the quickstart's test command against CI, and a recorded figure against its record.

A README row that drifts from the code misleads every reader at once; these tests name
the row and what it should say."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    """README text from the ``## title`` heading to the next ``## `` heading."""
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 4)
    return README[start : end if end >= 0 else len(README)]


def _first_cells(section: str) -> list[tuple[str, list[str]]]:
    """(first cell, the other cells) of each table row in ``section``; ``\\|`` inside a
    cell is a literal bar, not a column break."""
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append((cells[0].replace("\\|", "|"), [c.replace("\\|", "|") for c in cells[1:]]))
    return rows


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# -- configuration ------------------------------------------------------------------------
def _env_name(name: str, field: Any) -> str:
    return field.alias or f"STORYLINE_{name.upper()}"


def _readme_settings() -> dict[str, str]:
    """README's configuration table: variable -> its default as written (``unset`` for
    none). ``STORYLINE_A_B` / `_C`` rows share ``STORYLINE_A``; their defaults are listed
    in the same order, separated by ``/`` or ``,``."""
    out: dict[str, str] = {}
    for first, rest in _first_cells(_section("Configuration")):
        names = _code(first)
        if not names or not names[0].startswith("STORYLINE_"):
            continue
        prefix = "_".join(names[0].split("_")[:2])
        full = [n if n.startswith("STORYLINE_") else prefix + n for n in names]
        default = rest[0]
        values = ["unset"] * len(full) if default.startswith("unset") else _code(default)
        assert len(values) >= len(full), f"README row {first}: a default per variable"
        out.update(zip(full, values[: len(full)], strict=True))
    return out


def _same_default(written: str, value: Any) -> bool:
    if value is None:
        return written == "unset"
    if isinstance(value, bool):
        return written == str(value).lower()
    if isinstance(value, int | float):
        try:
            return float(written) == float(value)
        except ValueError:
            return False
    if isinstance(value, list):
        return bool(json.loads(written) == value)
    return written == str(value)


def test_readme_configuration_table_lists_every_setting_with_its_default() -> None:
    from storyline.service.settings import Settings

    fields = {_env_name(n, f): f for n, f in Settings.model_fields.items()}
    written = _readme_settings()
    assert not sorted(set(fields) - set(written)), "settings missing from README"
    assert not sorted(set(written) - set(fields)), "README rows naming no setting"
    for env, field in fields.items():
        default = field.get_default(call_default_factory=True)
        assert _same_default(written[env], default), (
            f"README says {env} defaults to {written[env]!r}; the settings model: {default!r}"
        )


# -- CLI ------------------------------------------------------------------------------------
def _cli_commands() -> dict[str, Any]:
    """Every leaf command of ``storyline`` by its path (``models build``)."""
    import typer.main

    from storyline.service.cli import app

    out: dict[str, Any] = {}

    def walk(cmd: Any, path: list[str]) -> None:
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            out[" ".join(path)] = cmd

    walk(typer.main.get_command(app), [])
    return out


def _readme_usages(paths: set[str]) -> dict[str, set[str]]:
    """Command path -> the options its usage in README's CLI table shows."""
    out: dict[str, set[str]] = {}
    for first, _ in _first_cells(_section("CLI")):
        for usage in _code(first):
            words = usage.removeprefix("storyline ").split()
            path = next((" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in paths), None)
            if path is None:
                continue
            out[path] = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", usage))
    return out


def _spellings(param: Any) -> set[str]:
    return {*param.opts, *param.secondary_opts}


# Documented once for every command in the paragraph under the table.
_EVERYWHERE = {"--help", "--data-dir"}


def test_readme_cli_table_shows_every_command_and_option() -> None:
    commands = _cli_commands()
    usages = _readme_usages(set(commands))
    assert not sorted(set(commands) - set(usages)), "commands missing from README's CLI table"
    for path, cmd in commands.items():
        options = [p for p in cmd.params if p.param_type_name == "option"]
        for opt in options:
            if _spellings(opt) & _EVERYWHERE:
                continue
            assert _spellings(opt) & usages[path], (
                f"`storyline {path}`: README's usage lacks {'/'.join(sorted(_spellings(opt)))}"
            )
        known = set().union(*(_spellings(o) for o in options)) if options else set()
        assert not sorted(usages[path] - known), f"`storyline {path}`: no such option"
    section = _section("CLI")
    assert "`--data-dir DIR`" in section, "the option every command takes is documented"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    block = _section("Quickstart").split("```bash\n", 1)[1].split("```", 1)[0]
    test_cmd = block.splitlines()[1].split("#", 1)[0].strip()
    lines = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert lines[-1] == test_cmd


# -- HTTP API -------------------------------------------------------------------------------
def _readme_endpoints() -> set[tuple[str, str]]:
    """(method, path with every ``{param}`` as ``{}``) per endpoint in README's HTTP table;
    a bare path in a cell takes the methods written before it."""
    out: set[tuple[str, str]] = set()
    for first, _ in _first_cells(_section("HTTP API")):
        methods: list[str] = []
        for item in _code(first):
            m = re.fullmatch(r"(?:([A-Z/]+) )?(/[^?\s]*)(?:\?.*)?", item)
            if m is None:
                continue
            if m.group(1):
                methods = m.group(1).split("/")
            path = re.sub(r"\{[^}]*\}", "{}", m.group(2))
            out.update((method, path) for method in methods)
    return out


def test_readme_http_table_lists_every_route(tmp_path: Path) -> None:
    from storyline.service.api.app import create_app
    from storyline.service.settings import Settings

    app = create_app(Settings(data_dir=tmp_path / "empty"))
    routes: set[tuple[str, str]] = set()
    for route in app.routes:
        if route.path.startswith("/schema"):  # litestar's own OpenAPI pages
            continue
        path = re.sub(r"\{[^}]*\}", "{}", route.path)
        for method in route.methods:
            if method != "OPTIONS":  # HEAD is documented where it is served
                routes.add((method, path))
    written = _readme_endpoints()
    assert not sorted(routes - written), "routes missing from README's HTTP table"
    assert not sorted(written - routes), "README endpoints the app does not have"


def test_readme_names_every_summary_mode_the_api_accepts() -> None:
    from storyline.service.api.schemas import SummariseRequest

    hint = typing.get_type_hints(SummariseRequest, include_extras=True)["mode"]
    modes = typing.get_args(typing.get_args(hint)[0])
    row = next(
        r for first, r in _first_cells(_section("HTTP API")) if first == "`POST /v1/summarise`"
    )
    for mode in modes:
        assert f"`{mode}`" in row[0], f"README's summarise row does not name mode {mode!r}"


# -- recorded figures -----------------------------------------------------------------------
def test_readme_portrayal_figure_is_the_current_record() -> None:
    quality = (ROOT / "docs" / "quality.md").read_text()
    stance = quality[quality.index("## Stance on stories") : quality.index("## Summaries")]
    now = next(line for line in stance.splitlines() if line.startswith("| **now**"))
    both = now.split("|")[4].strip().strip("*")  # the A + B coverage / macro-F1 column
    row = next(
        r for first, r in _first_cells(_section("Quality")) if first.startswith("actor portrayal")
    )
    assert row[0].startswith(both + " ") or row[0] == both, (
        f"README's portrayal figure {row[0]!r}; docs/quality.md records {both!r} now"
    )


@pytest.mark.parametrize("extra", ["build", "eval", "postgres", "ray", "dev"])
def test_readme_names_each_extra(extra: str) -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extra in extras
    assert f"`{extra}`" in _section("Development")
