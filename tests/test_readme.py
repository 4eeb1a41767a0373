"""The README stays true: its settings tables match the settings dataclasses, and its commands parse.

Reads README.md only (no network, no data files). A setting added to the code must be documented, a removed one
must leave the tables, a documented default must be the code's default, and every `anomaly ...` command the
README shows must name a real subcommand and only options that subcommand has.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import typing
import unicodedata
from pathlib import Path
from typing import Any, Literal

import click
import pytest

from anomaly.cli import main
from anomaly.config import GLOBAL_ENV_VARS, SECTIONS, PipelineConfig, env_overrides
from anomaly.thresholds import THRESHOLDS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")

# Default cells that describe a default instead of writing it. Each is accepted only for its own field, and only
# while the code's default is still the sentinel given here.
DESCRIPTIVE_DEFAULTS: dict[str, tuple[str, Any, str]] = {
    "data.features": ("all numeric", (), "empty: every numeric column that is not time, key or label"),
    "data.separator": ("detected", None, "None: detected from the header line"),
    "data.train_rows": ("all", None, "None: every row of each series"),
    "train.stride": ("window", 0, "0: stride = model.window, one window chain per series"),
    "engine.static_threshold": ("bundle's", None, "None: the bundle's calibrated threshold"),
    "engine.max_gap_seconds": ("bundle's", None, "None: 300 sampling intervals learnt at training"),
}

# `section.field` names the README may mention although they are not settings.
NOT_SETTINGS = {
    "kafka.max_call_bytes": "Performance names it as a removed setting (lat6)",
    "kafka.min_batch_bytes": "Performance names it as a removed setting (lat6)",
    "kafka.batch_linger_ms": "Performance names it as a removed setting (lat6)",
}
# ANOMALY_* variables the README may show although they name no setting.
NOT_ENV_SETTINGS = {"ANOMALY_ENGIN_THRESHOLD": "the README's example of a misspelt variable (an error)"}
FILE_SUFFIXES = {"pt", "csv", "onnx", "toml", "json", "jsonl", "parquet", "png", "prom", "py", "gz"}


def code_defaults() -> dict[str, Any]:
    """{"section.field": default} for every field of every section of PipelineConfig."""
    out: dict[str, Any] = {}
    for section, cls in typing.get_type_hints(PipelineConfig).items():
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            out[f"{section}.{f.name}"] = default
    return out


def readme_section(heading: str) -> str:
    """The text under a heading line, up to the next heading of the same or a higher level."""
    lines = README.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(rf"#{{1,{level}}} ", lines[i])),
        len(lines),
    )
    return "\n".join(lines[start + 1 : end])


def table_rows(text: str, prefix: str = "") -> list[tuple[str, str, str]]:
    """(setting, default cell, meaning cell) for every row whose first cell names settings in backticks; a row
    naming two (`a` / `b`) gives two, splitting a default written the same way (`x / y`)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = [prefix + n for n in re.findall(r"`([^`]+)`", cells[0])]
        defaults = cells[1].split(" / ") if len(names) > 1 else [cells[1]]
        if len(defaults) != len(names):
            defaults = defaults[:1] * len(names)
        rows.extend((name, default, cells[2]) for name, default in zip(names, defaults, strict=True))
    return rows


def documented_settings() -> list[tuple[str, str, str]]:
    reference = table_rows(readme_section("## Configuration reference"))
    kafka = table_rows(readme_section("### `[kafka]` settings"), prefix="kafka.")
    assert len(reference) >= 60 and len(kafka) >= 30, "a settings table was not found or not parsed"
    return reference + kafka


def documented_defaults() -> list[tuple[str, str]]:
    return [(name, default) for name, default, _ in documented_settings()]


def code_choices() -> dict[str, set[str]]:
    """{"section.field": choices} for every setting restricted to a fixed set of values."""
    out = {"engine.threshold": set(THRESHOLDS)}
    for section, cls in typing.get_type_hints(PipelineConfig).items():
        for name, hint in typing.get_type_hints(cls).items():
            literals = [a for a in (hint, *typing.get_args(hint)) if typing.get_origin(a) is Literal]
            if literals:
                out[f"{section}.{name}"] = {str(c) for c in typing.get_args(literals[0])}
    return out


def parse_literal(cell: str) -> Any:
    """The value a default cell writes: a number, true/false, none, a list, or a string (in backticks or a bare
    word); a trailing remark in parentheses ("0 (off)") is dropped."""
    text = re.sub(r"\s+\([^)]*\)$", "", cell).strip()
    quoted = re.fullmatch(r"`([^`]*)`", text)
    inner = quoted.group(1) if quoted else text
    if inner.startswith("["):
        return tuple(json.loads(inner))
    if inner in ("true", "false"):
        return inner == "true"
    if inner == "none" and not quoted:
        return None
    if re.fullmatch(r"-?\d+(\.\d+)?([eE]-?\d+)?", inner):
        return float(inner) if re.search(r"[.eE]", inner) else int(inner)
    return inner


def same(doc: Any, code: Any) -> bool:
    if isinstance(doc, bool) or isinstance(code, bool):
        return type(doc) is type(code) and doc == code
    return doc == code


def test_every_setting_is_documented_once_and_every_documented_one_exists() -> None:
    documented = [name for name, _ in documented_defaults()]
    code = code_defaults()
    assert sorted(set(code) - set(documented)) == [], "settings missing from the README tables"
    assert sorted(set(documented) - set(code)) == [], "README tables document settings the code does not have"
    assert sorted({n for n in documented if documented.count(n) > 1}) == [], "settings documented twice"


@pytest.mark.parametrize(("name", "cell"), documented_defaults(), ids=[n for n, _ in documented_defaults()])
def test_documented_default_is_the_code_default(name: str, cell: str) -> None:
    code = code_defaults()
    if name not in code:
        pytest.skip("not a setting (see the test above)")
    if name in DESCRIPTIVE_DEFAULTS:
        text, sentinel, reason = DESCRIPTIVE_DEFAULTS[name]
        assert cell == text, f"{name}: allow-listed as {text!r} ({reason}), README says {cell!r}"
        assert same(code[name], sentinel), f"{name}: README says {cell!r}, code default is {code[name]!r}"
        return
    doc = parse_literal(cell)
    assert same(doc, code[name]), f"{name}: README says {cell!r}, code default is {code[name]!r}"


def test_documented_choices_are_the_code_choices() -> None:
    """A setting with fixed choices lists exactly those in backticks in its meaning (options such as
    `--time-unit` aside): no choice the code refuses, none it accepts left out."""
    meanings = {name: meaning for name, _, meaning in documented_settings()}
    choices = code_choices()
    assert len(choices) >= 10
    for name, allowed in sorted(choices.items()):
        listed = {w for w in re.findall(r"`([^`]+)`", meanings[name]) if not w.startswith("-")}
        assert listed == allowed, f"{name}: README lists {sorted(listed)}, the code takes {sorted(allowed)}"


def test_descriptive_allow_list_has_no_stale_entries() -> None:
    documented = dict(documented_defaults())
    for name, (text, _, _) in DESCRIPTIVE_DEFAULTS.items():
        assert documented.get(name) == text, (
            f"{name}: allow-listed as {text!r}, README now says something else"
        )


def test_settings_named_in_prose_exist() -> None:
    """A backticked `section.field` anywhere in the README names a real setting."""
    code = code_defaults()
    pattern = rf"`((?:{'|'.join(SECTIONS)})\.([a-z_]+))`"
    named = {m[0] for m in re.findall(pattern, README) if m[1] not in FILE_SUFFIXES}
    assert sorted(named - set(code) - set(NOT_SETTINGS)) == []
    assert sorted(set(NOT_SETTINGS) & set(code)) == [], "NOT_SETTINGS names a real setting"
    assert sorted(set(NOT_SETTINGS) - named) == [], "NOT_SETTINGS has entries the README no longer names"


def test_environment_variables_in_the_readme_name_settings() -> None:
    code = code_defaults()
    names = {v for v in re.findall(r"ANOMALY_[A-Z0-9_]+", README) if not v.endswith("_")}
    for var in sorted(names - GLOBAL_ENV_VARS - set(NOT_ENV_SETTINGS)):
        [(section, fields)] = env_overrides({var: "x"}).items()
        assert [f"{section}.{f}" for f in fields][0] in code, f"{var} names no setting"
    assert sorted(set(NOT_ENV_SETTINGS) - names) == [], "NOT_ENV_SETTINGS has stale entries"


# --- commands -----------------------------------------------------------------------------------------------


def readme_commands() -> list[str]:
    """Every `anomaly ...` command: lines of ```sh blocks that start with it (continuations joined, `&&` chains
    split) and inline code spans outside code blocks."""
    commands, prose, block = [], [], None
    for line in README.splitlines():
        if line.startswith("```"):
            block = None if block is not None else line[3:].strip()
            continue
        if block is None:
            prose.append(line)
        elif block == "sh":
            commands.append(line)
    joined = re.sub(r"\\\n\s*", " ", "\n".join(commands))
    found = [
        part.strip()
        for line in joined.splitlines()
        for part in line.split("&&")
        if part.strip().startswith("anomaly ")
    ]
    spans = re.findall(r"`(anomaly [^`]+)`", "\n".join(prose))
    return found + [s.replace("\\|", "|") for s in spans]


def argv(command: str) -> list[str]:
    """Tokens of a documented command: `[optional]` and `(a | b)` groups and `a|b` alternatives are opened up
    (every option of every alternative is checked), `#` comments and `...`/`…` placeholders dropped."""
    text = re.sub(r"[\[\]()|]", " ", command.replace("…", " "))
    return [t for t in shlex.split(text, comments=True) if t != "..."][1:]


def option_names(command: click.Command, ctx: click.Context) -> set[str]:
    return {o for p in command.get_params(ctx) for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


def options_used(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if re.match(r"--?[A-Za-z]", t)]


def resolve(tokens: list[str]) -> tuple[click.Context, str, click.Command | None, list[str], list[str]]:
    """Split `anomaly [group options] COMMAND ARGS` as click does: the group's context, the command's name, the
    command (None if there is none of that name), its arguments, and any option `anomaly` itself lacks."""
    params = main.get_params(main.make_context("anomaly", [], resilient_parsing=True))
    i, unknown = 0, []
    while i < len(tokens) and tokens[i].startswith("-"):
        name = tokens[i].split("=", 1)[0]
        param = next((p for p in params if name in (*p.opts, *p.secondary_opts)), None)
        unknown += [name] if param is None else []
        i += 1 if param is None or getattr(param, "is_flag", False) or "=" in tokens[i] else 2
    ctx = main.make_context("anomaly", tokens[: i + 1], resilient_parsing=True)
    if i >= len(tokens):
        return ctx, "", None, [], unknown
    _, command, rest = main.resolve_command(ctx, tokens[i:])
    return ctx, tokens[i], command, rest, unknown


COMMANDS = readme_commands()


def test_the_readme_shows_commands() -> None:
    assert len(COMMANDS) >= 40, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_documented_command_parses(command: str) -> None:
    group_ctx, name, sub, args, unknown_group_options = resolve(argv(command))
    assert unknown_group_options == [], f"anomaly has no option {', '.join(unknown_group_options)}"
    if not name:
        return  # `anomaly --threads N`: group options only, checked by resolve
    assert sub is not None, f"no subcommand {name!r}; anomaly has: {', '.join(sorted(main.commands))}"
    ctx = sub.make_context(name, list(args), parent=group_ctx, resilient_parsing=True)
    unknown = [o for o in options_used(args) if o not in option_names(sub, ctx)]
    assert unknown == [], f"anomaly {name} has no option {', '.join(unknown)}"


def test_every_command_appears_in_the_readme() -> None:
    shown = {resolve(argv(c))[1] for c in COMMANDS}
    assert sorted(set(main.commands) - shown) == []


def test_inspect_help_lists_what_the_readme_says_inspect_prints():
    """`inspect --help` listed features, architecture, calibration and training; the README's Commands table
    also lists sampling and missing values (which it prints): both now list the same things."""
    row = re.search(r"^\| `anomaly inspect [^|]*\| prints a bundle's metadata: ([^|]*) \|$", README, re.M)
    assert row is not None
    inspect = main.get_command(click.Context(main), "inspect")
    assert inspect is not None and inspect.help is not None
    help_text = " ".join(inspect.help.split())
    listed = help_text.split("metadata: ", 1)[1].rstrip(".")
    assert listed == row.group(1)


def _github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, only letters, marks, decimal digits, spaces, '-' and '_' kept,
    spaces become '-' (so "`[kafka]` settings" is "kafka-settings" and "tracked z²" is "tracked-z")."""
    kept = (
        ch
        for ch in heading.strip().lower()
        if ch in " -_" or unicodedata.category(ch)[0] in "LM" or unicodedata.category(ch) == "Nd"
    )
    return "".join(kept).replace(" ", "-")


def readme_anchors(text: str) -> set[str]:
    """Every heading's anchor outside code blocks, a repeated one numbered as GitHub numbers it."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            base = _github_anchor(m.group(1))
            anchors.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return anchors


def test_github_anchor_follows_githubs_rules() -> None:
    assert _github_anchor("`[kafka]` settings") == "kafka-settings"
    assert _github_anchor("Why the error tracked z²") == "why-the-error-tracked-z"
    assert _github_anchor("Export: int8 and ONNX") == "export-int8-and-onnx"
    assert readme_anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_every_link_inside_the_readme_leads_to_a_heading() -> None:
    links = set(re.findall(r"\]\(#([^)\s]+)\)", README))
    assert len(links) >= 20, "the contents list links every section"
    assert sorted(links - readme_anchors(README)) == []


def test_monitoring_table_labels_are_the_served_labels() -> None:
    """Every metric row of "Monitoring" names the labels /metrics gives it (names and types are checked in
    tests/test_metrics.py): a label added to or dropped from anomaly/metrics.py must reach the table."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from anomaly.metrics import PipelineMetrics

    documented: dict[str, set[str]] = {}
    for line in readme_section("## Monitoring").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`anomaly_"):
            labels = set(re.findall(r"`(\w+)`", cells[2].split("(")[0]))
            for name in re.findall(r"`(anomaly_\w+)`", cells[0]):
                documented[name.removesuffix("_total")] = labels
    served: dict[str, set[str]] = {}
    metrics = PipelineMetrics(registry=CollectorRegistry())
    # an Info has its labels once set, as a daemon's model_loaded sets them
    metrics.model_loaded(SimpleNamespace(meta={}, version="v", features=(), calibration={}))
    metrics.pipeline_started("g", ["t"])  # and the daemon's pipeline_started
    for family in metrics.registry.collect():
        name = f"{family.name}_info" if family.type == "info" else family.name
        served[name] = set()
        for collector_labels in (s.labels for s in family.samples):
            served[name] |= set(collector_labels) - {"le"}
    unlabelled = {n for n, v in served.items() if not v}
    # a labelled metric with no series yet (anomaly_alert_active, the lag) shows no samples: take its declaration
    from anomaly import metrics as m

    source = Path(m.__file__).read_text(encoding="utf-8")
    for name in unlabelled:
        decl = re.search(rf'"{name}",\s*"[^"]*"(?:\s*"[^"]*")*,\s*\[([^\]]*)\]', source)
        if decl:
            served[name] = set(re.findall(r'"(\w+)"', decl.group(1)))
    assert documented.keys() == served.keys()
    assert {n: sorted(v) for n, v in documented.items()} == {n: sorted(v) for n, v in served.items()}


def test_alerts_table_names_every_alerting_rule() -> None:
    """README "Alerts" lists exactly the alerts of deploy/prometheus/rules/anomaly.rules.yml, each with its
    `for` duration where the rule has one (written as 15 s, 2 m, 1 h)."""
    import yaml

    rules_file = Path(__file__).resolve().parent.parent / "deploy/prometheus/rules/anomaly.rules.yml"
    rules = [r for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"] if "alert" in r]
    rows = {}
    for line in readme_section("### Alerts").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"[A-Z]\w+", cells[0]) and cells[0] != "alert":
            rows[cells[0]] = cells[1]
    assert sorted(rows) == sorted(r["alert"] for r in rules)
    for rule in rules:
        if "for" in rule:
            amount, unit = re.fullmatch(r"(\d+)([smh])", rule["for"]).groups()  # type: ignore[union-attr]
            # "no window scored for 15 m": an increase over [5m] that must stay 0 for 10m
            ranges = [int(r) for r in re.findall(rf"\[(\d+){unit}\]\) == 0", rule["expr"])]
            said = {f"for {n} {unit}" for n in [int(amount)] + [int(amount) + r for r in ranges]}
            assert any(s in rows[rule["alert"]] for s in said), (rule["alert"], rule["for"])


# --- options, files, make targets and tests named anywhere -------------------------------------------------

# Options of other programs the README shows: Kafka's kafka-configs, kafka-topics and kafka-consumer-groups, docker
# compose, the Tansu broker.
FOREIGN_OPTIONS = {
    "--add-config": "kafka-configs",
    "--alter": "kafka-configs",
    "--bootstrap-server": "kafka-configs",
    "--entity-name": "kafka-configs",
    "--entity-type": "kafka-configs",
    "--config": "kafka-topics",
    "--create": "kafka-topics",
    "--delete": "kafka-topics",
    "--reset-offsets": "kafka-consumer-groups",
    "--shift-by": "kafka-consumer-groups",
    "--to-datetime": "kafka-consumer-groups",
    "--to-earliest": "kafka-consumer-groups",
    "--to-latest": "kafka-consumer-groups",
    "--build": "docker compose up",
    "--rm": "docker compose run",
    "--listener-url": "tansu broker",
    "--advertised-listener-url": "tansu broker",
}


def anomaly_options() -> set[str]:
    """Every option of `anomaly` and of each of its commands."""
    group_ctx = click.Context(main)
    names = option_names(main, group_ctx)
    for command in main.commands.values():
        names |= option_names(command, click.Context(command, parent=group_ctx))
    return names


def unknown_options(text: str, known: set[str]) -> list[str]:
    """`--options` of TEXT that are neither KNOWN nor another program's; `--churn-*` (a trailing '-') stands for
    every option it begins."""
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    return sorted(
        n
        for n in named - known - set(FOREIGN_OPTIONS)
        if not (n.endswith("-") and any(k.startswith(n) for k in known))
    )


def test_every_option_the_readme_names_exists() -> None:
    """An `--option` anywhere in the README (prose and tables too, where the command check above does not look)
    is an option of `anomaly` or of one of its commands, or of another program it shows: an option renamed or
    removed cannot stay documented."""
    known = anomaly_options()
    assert unknown_options("pass `--dayfirst` or `--day-first`, `--churn-*`", known) == ["--day-first"]
    assert unknown_options(README, known) == []
    unused = sorted(o for o in FOREIGN_OPTIONS if not re.search(rf"(?<![\w-]){o}(?![\w-])", README))
    assert unused == [], "FOREIGN_OPTIONS has entries the README no longer names"
    assert sorted(set(FOREIGN_OPTIONS) & known) == [], "FOREIGN_OPTIONS names an option of anomaly"


ROOT = Path(__file__).resolve().parent.parent
# Paths the README names that are placeholders or outputs of the commands it shows, not files of the checkout.
NOT_IN_CHECKOUT = re.compile(r"runs/.*|pipelines/NAME\.toml")


def missing_paths(text: str) -> list[str]:
    """Paths under the checkout's folders that TEXT names and that do not exist (a glob matching nothing
    included); `FILE#anchor` must name a heading of that Markdown file."""
    named = set(re.findall(r"(?<![\w./-])((?:deploy|pipelines|anomaly|tests|runs)/[\w./*#-]*)", text))
    missing = []
    for name in sorted(named):
        path, _, anchor = name.rstrip(".").partition("#")
        if NOT_IN_CHECKOUT.fullmatch(path):
            continue
        if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
            missing.append(name)
        elif anchor and anchor not in readme_anchors((ROOT / path).read_text(encoding="utf-8")):
            missing.append(name)
    return missing


def test_every_file_the_readme_names_exists() -> None:
    assert missing_paths("`deploy/README.md#modeldrift`, `tests/test_readme.py`, `deploy/k8s/*.yaml`") == []
    assert missing_paths("`deploy/README.md#no-such-heading` and `anomaly/nosuch.py`, `tests/x*.yml`") == [
        "anomaly/nosuch.py",
        "deploy/README.md#no-such-heading",
        "tests/x*.yml",
    ]
    assert missing_paths(README) == []


def test_every_make_target_and_test_the_readme_names_exists() -> None:
    """`make X` names a target of the Makefile; a backticked `test_...` a test function or test file; `python -m
    anomaly.X` a module of the package."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    assert sorted(set(re.findall(r"`make ([\w-]+)", README)) - targets) == []
    tests_source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("*.py"))
    defined = set(re.findall(r"^\s*def (test_\w+)", tests_source, re.M))
    files = {p.name for p in (ROOT / "tests").rglob("test_*.py")}
    named = set(re.findall(r"`(test_\w+(?:\.py)?)`", README))
    assert len(named) >= 10
    assert sorted(named - defined - files) == []
    modules = set(re.findall(r"python -m (anomaly(?:\.\w+)+)", README))
    assert sorted(m for m in modules if not (ROOT / (m.replace(".", "/") + ".py")).exists()) == []


# Pieces of the Errors table's messages that the code writes from parts, or that are another program's.
ERROR_PIECES_NOT_IN_CODE = {
    "as CSV: it is not shift_jis text on line": "the codec is the one given, shift_jis the example",
    "rows repeat another row's timestamp, in file order, and every time is a whole minute": "minute, hour, second",
    "columns trend, noise": "the names found are listed",
    "fields in line": "pandas' parser error",
    "does not match the model's features: missing": "the parts are joined, missing then unexpected",
    "not enough training data: engine.nan_policy =": "the cause is written apart",
}


def error_pieces_not_in_code(table: str, source: str) -> list[str]:
    """Pieces of 12 characters or more of the messages in TABLE's first column (split at `...`, quoted values,
    placeholders such as N, FILE or X, and numbers) that no string of SOURCE holds."""
    joined = re.sub(r"\"\s*\n\s*f?r?\"", "", source)  # adjacent string literals, as Python joins them
    missing = []
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        for span in re.findall(r"`([^`]+)`", cells[0]):
            for piece in re.split(r"\.\.\.|…|'[^']*'|\b(?:[A-Z][0-9]?|FILE|DATA|FIRST|NAME)\b|\d+", span):
                piece = piece.strip(" ,:;()")
                if len(piece) >= 12 and piece not in joined:
                    missing.append(piece)
    return missing


def test_the_errors_table_quotes_the_code() -> None:
    """Each message of "Your data"'s Errors table ("message starts with") is written by the code as quoted: a
    message reworded in the code cannot keep its old words in the README."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "anomaly").rglob("*.py")))
    table = readme_section("### Your data").split("**Errors.**", 1)[1]
    example = (
        "| `...: column 'C' counts up reading by reading, like a clock` | x |\n| `FILE has N labels` | x |"
    )
    assert error_pieces_not_in_code(
        example, 'f"column {c!r} counts up reading by reading in equal steps"'
    ) == ["counts up reading by reading, like a clock"]
    found = error_pieces_not_in_code(table, source)
    assert len(re.findall(r"^\| `", table, re.M)) >= 40, "the Errors table was not found"
    assert sorted(set(found) - set(ERROR_PIECES_NOT_IN_CODE)) == []
    assert sorted(set(ERROR_PIECES_NOT_IN_CODE) - set(found)) == [], "stale ERROR_PIECES_NOT_IN_CODE entries"
