"""How `aqe-v3 mcp` answers look to people: rich tables that keep their labels and units, the live dashboard laid
out to the terminal's width, and tool schemas as indented trees. `--json` bypasses all of this.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any, Final

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

SPARKS: Final = "▁▂▃▄▅▆▇█"
BAR: Final = "█"
OK, WARN, BAD, DIM = "green", "yellow", "red", "dim"
_PREFIX: Final = "aqe_mcp_"


# ---- numbers with their units ----------------------------------------------------------------------


def ms(value: float | None) -> str:
    """A duration in milliseconds, to the precision a person reads: 1.25 s, 312 ms, 4.1 ms, 0.35 ms, 12 µs."""
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    if value >= 0.1:
        return f"{value:.2f} ms"
    return f"{value * 1000:.0f} µs"


def pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.1f} %" if 0 < value < 0.1 else f"{value * 100:.0f} %"


def number(value: Any) -> str:
    """Any scalar, without 15-digit floats: integers as they are, other floats to 3 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.3g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, list | tuple):
        return ", ".join(number(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={number(v)}" for k, v in value.items()) if value else "-"
    return str(value)


def field(key: str, value: Any) -> str:
    """A value of a command's answer, formatted by what its key says it is (…Ms, …Rate, …At, …Ns)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if key.endswith("Ms"):
            return ms(float(value))
        if key.endswith("Ns"):
            return ms(float(value) / 1e6)
        if key.endswith(("Rate", "Ratio")) or key in ("utilization", "load"):
            return pct(float(value))
        if key.endswith("At") and value > 1e9:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        if key.endswith("S") and isinstance(value, float):
            return f"{value:.1f} s"
    return number(value)


# ---- generic answers -------------------------------------------------------------------------------


def heading(key: str) -> str:
    """A camelCase key as words, its unit suffix dropped (the value carries it): targetLatencyMs -> target latency."""
    for unit in ("Ms", "Ns", "S"):
        if key.endswith(unit) and len(key) > len(unit) and key[-len(unit) - 1].islower():
            key = key.removesuffix(unit)
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).lower()


def answer(result: Any, width: int) -> RenderableType:
    """Any command's answer: a dict as labelled rows (nested dicts as nested tables), a list of dicts as a table
    (turned on its side when its columns would not fit in `width`)."""
    if isinstance(result, list):
        return rows(result, width)
    if isinstance(result, dict):
        return pairs(result, width)
    return Text(number(result))


def pairs(values: dict[str, Any], width: int) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    inner = width - max((len(k) for k in values), default=0) - 2
    for key, value in values.items():
        if isinstance(value, dict) and value:
            table.add_row(heading(key), pairs(value, inner))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            table.add_row(heading(key), rows(value, inner))
        else:
            table.add_row(heading(key), field(key, value))
    return table


def rows(items: list[dict[str, Any]], width: int) -> RenderableType:
    """A table with a row per item; when that is wider than `width` but a column per item (a field per row) fits,
    that; else the row-per-item table with its text wrapped."""
    if not items:
        return Text("(none)", style=DIM)
    columns = list(dict.fromkeys(k for item in items for k, v in item.items() if not isinstance(v, dict | list)))
    cells = [[field(column, item.get(column)) for column in columns] for item in items]
    names = [heading(column) for column in columns]
    natural = sum(max(len(name), *(len(row[i]) for row in cells)) + 2 for i, name in enumerate(names))
    turned = max(len(name) for name in names) + 2 + sum(
        max(len(cell) for cell in row) + 2 for row in cells)
    if natural > width >= turned:
        sideways = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        sideways.add_column("", style="bold cyan", no_wrap=True)
        for row in cells:
            sideways.add_column(row[0], overflow="fold")
        for i, name in enumerate(names[1:], 1):
            sideways.add_row(name, *(row[i] for row in cells))
        return sideways
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for i, column in enumerate(columns):
        numeric = any(isinstance(item.get(column), int | float) and not isinstance(item.get(column), bool)
                      for item in items)
        table.add_column(names[i], justify="right" if numeric else "left", overflow="fold", no_wrap=i == 0)
    for row in cells:
        table.add_row(*row)
    return table


def alerts(listing: dict[str, list[dict[str, Any]]]) -> RenderableType:
    """`alerts list`: one entry per alert, coloured by state, with the summary of its current reading."""
    styles = {"firing": BAD, "pending": WARN, "resolved": OK}
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for state in ("firing", "pending", "resolved"):
        for alert in listing.get(state, []):
            when = alert.get("resolvedAt") if state == "resolved" else alert.get("activeSince")
            head = Text(f"{alert['severity']} {alert['name']}{' ' + alert['tool'] if alert.get('tool') else ''}",
                        style="bold")
            head.append(f"  {'resolved' if state == 'resolved' else 'since'} {when}", style=DIM)
            grid.add_row(Text(state.upper(), style=f"bold {styles[state]}"), head)
            grid.add_row("", alert["summary"])
    return grid if grid.row_count else Text("no alerts firing, pending or recently resolved", style=DIM)


# ---- metrics (the snapshot of `metrics --export json`) ---------------------------------------------


def _short(name: str, label: str = "") -> tuple[str, str]:
    """A family's column heading and unit: aqe_mcp_tool_duration_seconds -> ("tool duration", "ms")."""
    base = name.removeprefix(_PREFIX)
    if label and base.startswith(label + "_"):
        base = base.removeprefix(label + "_")  # in the table by tool, "tool calls" is "calls"
    if base.endswith("_ratio"):
        return base.replace("_", " "), "%"  # "cache hit ratio 98 %": the word stays, the value is a share
    for suffix, unit in (("_total", ""), ("_seconds", "ms"), ("_bytes", "MiB")):
        if base.endswith(suffix):
            return base.removesuffix(suffix).replace("_", " "), unit
    return base.replace("_", " "), ""


def _scaled(value: Any, unit: str) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return number(value)
    if unit == "ms":
        return ms(value * 1000.0)
    if unit == "%":
        return pct(value)
    if unit == "MiB":
        return f"{value / (1 << 20):.1f} MiB"
    return number(value)


# Labels that refine a row instead of naming one: `kind` (whose fault an error was) shares the errors cell,
# "2 (5)" for 2 server faults and 5 callers' mistakes, which keeps the table within 80 columns; `mode`
# (tools.<name>.modes) is a row under its tool, "default" being the tool's own row.
_PIVOTED: Final = "kind"
_MODE: Final = "mode"
_DEFAULT_MODE: Final = "default"


def metrics(snapshot: dict[str, Any]) -> RenderableType:
    """Every metric family, grouped by its labels (one table by tool, one by method, one by agent, ...) so each
    row says what it counts; durations in ms with p50/p95/p99, ratios in %."""
    # Families with the same labels and overlapping label values share a table: calls, errors, latency and
    # target by tool side by side; HTTP statuses and agent statuses (both "status") stay apart.
    groups: list[tuple[tuple[str, ...], set[tuple[str, ...]], list[tuple[str, dict[str, Any]]]]] = []
    plain = []
    for name, family in snapshot.get("metrics", {}).items():
        labels = tuple(dict.fromkeys(
            k for s in family["samples"] for k in s["labels"] if k not in (_PIVOTED, _MODE)
        ))
        if not labels:
            plain.append((name, family))
            continue
        keys = {tuple(str(s["labels"].get(label, "")) for label in labels) for s in family["samples"]}
        group = next((g for g in groups if g[0] == labels and g[1] & keys), None)
        if group is None:
            groups.append((labels, keys, [(name, family)]))
        else:
            group[1].update(keys)
            group[2].append((name, family))
    parts: list[RenderableType] = [Text(f"aqe-mcp metrics at {snapshot.get('generatedAt', '?')}", style="bold")]
    for labels, _, families in groups:
        parts.append(_labelled(labels, families))
    if plain:
        table = Table(box=box.SIMPLE_HEAD, title="totals", title_justify="left", pad_edge=False)
        table.add_column("metric", no_wrap=True)
        table.add_column("value", justify="right")
        for name, family in plain:
            heading, unit = _short(name)
            for sample in family["samples"]:
                if family["type"] == "histogram":
                    value = (f"p50 {_scaled(sample['p50'], unit)} · p95 {_scaled(sample['p95'], unit)} · "
                             f"p99 {_scaled(sample['p99'], unit)} · {sample['count']} samples")
                elif family["type"] == "summary":
                    mean = sample["sum"] / sample["count"] if sample["count"] else None
                    value = f"mean {_scaled(mean, unit)} · {sample['count']} samples"
                elif name.endswith("_time_seconds"):
                    value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sample["value"]))
                else:
                    value = _scaled(sample["value"], unit)
                table.add_row(heading, value)
        parts.append(table)
    return Group(*parts)


def _labelled(labels: tuple[str, ...], families: list[tuple[str, dict[str, Any]]]) -> Table:
    """One table for the families sharing `labels`: a row per label value, a column (or p50/p95/p99) per family."""
    table = Table(box=box.SIMPLE_HEAD, title=f"by {', '.join(labels)}", title_justify="left", caption_justify="left",
                  pad_edge=False)
    for label in labels:
        table.add_column(label, no_wrap=True, style="cyan")
    cells: dict[tuple[str, ...], dict[int, str]] = {}
    by_kind: dict[tuple[tuple[str, ...], str], Any] = {}
    column = 0
    histograms = sum(family["type"] == "histogram" for _, family in families)
    for name, family in families:
        heading, unit = _short(name, labels[0])
        histogram = family["type"] == "histogram"
        # One histogram in the table: its columns are just p50/p95/p99 (each cell carries its unit).
        headings = ([q if histograms == 1 else f"{heading} {q}" for q in ("p50", "p95", "p99")] if histogram
                    else [heading])
        for text in headings:
            table.add_column(text, justify="right")
        for sample in family["samples"]:
            sample_labels = sample["labels"]
            mode = sample_labels.get(_MODE, _DEFAULT_MODE)
            key = (*(str(sample_labels.get(label, "")) for label in labels), "" if mode == _DEFAULT_MODE else mode)
            row = cells.setdefault(key, {})
            if histogram:
                for i, q in enumerate(("p50", "p95", "p99")):
                    row[column + i] = _scaled(sample[q], unit) if sample["count"] else "-"
            elif _PIVOTED in sample_labels:
                by_kind[key, sample_labels[_PIVOTED]] = sample.get("value") or 0
                server, caller = (number(by_kind.get((key, kind), 0)) for kind in ("server", "caller"))
                row[column] = f"{server} ({caller})"
                table.caption = f"{heading}: the server's faults (callers' mistakes in brackets, not alerted on)"
            else:
                row[column] = _scaled(sample.get("value"), unit)
        column += len(headings)
    for *values, mode in sorted(cells):
        # A mode's row sits under its tool's: "  verify mode" with its own latency and target.
        shown = [f"  {mode} mode", *("" for _ in values[1:])] if mode else values
        table.add_row(*shown, *(cells[(*values, mode)].get(i, "-") for i in range(column)))
    return table


# ---- tool schemas ---------------------------------------------------------------------------------


def tool(lookup: dict[str, Any]) -> RenderableType:
    """`tools lookup`: the tool's header and its input and output schemas as indented trees."""
    spec = lookup.get("tool") or {}
    head = Text()
    head.append(spec.get("name", "?"), style="bold cyan")
    if spec.get("title"):
        head.append(f" — {spec['title']}")
    if lookup.get("fuzzy"):
        head.append(f"  (resolved from {lookup.get('requested')!r})", style=WARN)
    parts: list[RenderableType] = [head]
    if spec.get("description"):
        parts.append(Text(spec["description"], style="italic"))
    details = {k: v for k, v in spec.items()
               if k not in ("name", "title", "description", "inputSchema", "outputSchema")}
    if details:
        parts.append(pairs(details, 200))
    for key, label in (("inputSchema", "input"), ("outputSchema", "output")):
        if isinstance(spec.get(key), dict):
            tree = Tree(Text(label, style="bold"), guide_style=DIM)
            _schema(tree, spec[key], spec[key].get("$defs") or spec[key].get("definitions") or {})
            parts.append(tree)
    return Group(*parts)


def _type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    """A schema's type in a few words: `string (1+ chars) | null`, `integer 1..10000`, `one of a, b`."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_type(option, defs) for option in schema[key])
    if "enum" in schema:
        return "one of " + ", ".join(number(v) if not isinstance(v, str) else v for v in schema["enum"])
    if "const" in schema:
        return f"= {schema['const']!r}"
    kind = schema.get("type", "any")
    kind = " | ".join(kind) if isinstance(kind, list) else str(kind)
    limits = []
    if "minLength" in schema or "maxLength" in schema:
        limits.append(f"{schema.get('minLength', 0)}..{schema.get('maxLength', '')} chars".replace("..  ", " "))
    if "minimum" in schema or "maximum" in schema:
        limits.append(f"{number(schema.get('minimum', ''))}..{number(schema.get('maximum', ''))}")
    if "minItems" in schema or "maxItems" in schema:
        limits.append(f"{schema.get('minItems', 0)}..{schema.get('maxItems', '')} items")
    if kind == "array" and isinstance(schema.get("items"), dict):
        kind = f"array of {_type(schema['items'], defs)}"
    return kind + (f" ({', '.join(limits)})" if limits else "")


def _schema(tree: Tree, schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> None:
    schema = _resolve(schema, defs)
    options = [] if schema.get("properties") else list(schema.get("anyOf") or schema.get("oneOf") or [])
    if options:
        # A result of several shapes (a long tool's own, or what `background: true` answers instead): the first
        # at the top, each other under an "or" branch.
        _schema(tree, options[0], defs, depth)
        for option in options[1:]:
            _schema(tree.add(Text("or", style=DIM)), option, defs, depth + 1)
        return
    required = set(schema.get("required", ()))
    for name, prop in (schema.get("properties") or {}).items():
        line = Text()
        line.append(name, style="bold cyan" if name in required else "cyan")
        line.append("*" if name in required else "", style="red")
        line.append(f"  {_type(prop, defs)}", style="green")
        if "default" in prop and prop["default"] is not None:
            line.append(f"  default {number(prop['default'])}", style=DIM)
        if prop.get("description"):
            line.append(f"\n{prop['description']}", style="default")
        branch = tree.add(line)
        if depth < 6:
            for nested in _nested(prop, defs):
                _schema(branch, nested, defs, depth + 1)


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        found: dict[str, Any] = defs.get(ref.rsplit("/", 1)[-1], {})
        return found
    return schema


def _nested(prop: dict[str, Any], defs: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Object schemas inside a property (directly, as array items, or among anyOf options)."""
    candidates = [prop, prop.get("items") or {}, *(prop.get("anyOf") or []), *(prop.get("oneOf") or [])]
    for candidate in candidates:
        if isinstance(candidate, dict):
            resolved = _resolve(candidate, defs)
            if resolved.get("properties"):
                yield resolved
            elif isinstance(resolved.get("items"), dict) and resolved is not prop:
                inner = _resolve(resolved["items"], defs)
                if inner.get("properties"):
                    yield inner


# ---- the live dashboard ---------------------------------------------------------------------------


def sparkline(values: list[float | None], width: int, top: float | None = None) -> str:
    """The last `width` values as block characters scaled 0..top (default the largest); gaps as spaces."""
    tail = values[-width:] if width > 0 else []
    known = [v for v in tail if v is not None]
    ceiling = max([top or 0.0, *known]) or 1.0
    return "".join(" " if v is None else SPARKS[min(len(SPARKS) - 1, int(v / ceiling * (len(SPARKS) - 1) + 0.5))]
                   for v in tail)


def bar(share: float | None, width: int) -> str:
    filled = 0 if share is None else round(max(0.0, min(1.0, share)) * width)
    return BAR * filled + "·" * (width - filled)


def _verdict(
    value: float | None, limit: float | None, warn: float | None = None, higher_is_better: bool = False
) -> str:
    if value is None or limit is None:
        return DIM
    if higher_is_better:
        return OK if value >= limit else (WARN if warn is not None and value >= warn else BAD)
    return OK if value <= limit else (WARN if warn is not None and value <= warn else BAD)


def _met(within: bool | None) -> str:
    return DIM if within is None else OK if within else BAD


def dashboard(data: dict[str, Any], width: int) -> RenderableType:
    """The live view, laid out for a terminal `width` columns wide: a status line, latency with sparklines per
    tool coloured by target met or missed, the pool, the agents with load bars, and the alerts."""
    history = data.get("history") or []
    latency, errors, pool = data["latency"], data["errors"], data.get("pool")
    firing, pending = data["alerts"]["firing"], data["alerts"]["pending"]
    status = Text()
    status.append(f"aqe-mcp {data.get('version', '')}", style="bold")
    status.append(f"  up {_age(data.get('uptimeS', 0))}  {time.strftime('%H:%M:%S')}  ")
    status.append(f"{data['requests']['perSecond']:.1f} req/s  ")
    status.append(f"errors {pct(errors['rate'])}", style=_verdict(errors["rate"], errors["threshold"]))
    status.append("  ")
    if firing:
        status.append(f" {len(firing)} FIRING ", style="bold white on red")
    elif pending:
        status.append(f" {len(pending)} pending ", style="bold black on yellow")
    else:
        status.append(" all clear ", style="bold white on green")

    spark_width = max(10, width - 64)
    overall = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, title="latency, last minute",
                    title_justify="left", title_style="bold")
    overall.add_column("", no_wrap=True)
    overall.add_column("now", justify="right", no_wrap=True)
    overall.add_column("target", justify="right", no_wrap=True)
    overall.add_column("calls/min", justify="right", no_wrap=True)
    overall.add_column(f"p95, last {len(history[-spark_width:])} s", no_wrap=True, ratio=1)
    target = latency["targetP95Ms"]
    overall.add_row(
        Text("all tools p95", style="bold"),
        Text(ms(latency["p95Ms"]), style=_verdict(latency["p95Ms"], target, latency["alertP95Ms"])),
        ms(target), str(latency["calls"]),
        Text(sparkline([p.get("p95Ms") for p in history], spark_width, target),
             style=_verdict(latency["p95Ms"], target, latency["alertP95Ms"])),
    )
    in_modes = f"  +{latency['modeCalls']} in modes" if latency.get("modeCalls") else ""
    overall.add_row(Text(f"p50 {ms(latency['p50Ms'])}  p99 {ms(latency['p99Ms'])}{in_modes}", style=DIM),
                    "", "", "", "")
    for row in data["tools"]:
        # A tool called in several modes (tools.<name>.modes) is judged per mode, each against its own target:
        # its row is met when every mode's is, and each mode has a row under it.
        style = _met(row["withinTarget"])
        overall.add_row(
            Text(row["tool"], style="cyan"), Text(ms(row["p95Ms"]), style=style),
            "" if row.get("modes") else ms(row["targetMs"]),
            f"{row['calls']}", Text(sparkline([(p.get("tools") or {}).get(row["tool"]) for p in history],
                                              spark_width, row["targetMs"]), style=style),
        )
        for mode in row.get("modes") or ():
            style = _met(mode["withinTarget"])
            key = f"{row['tool']}/{mode['mode']}"
            overall.add_row(
                f"  {mode['mode']} mode", Text(ms(mode["p95Ms"]), style=style), ms(mode["targetMs"]),
                f"{mode['calls']}", Text(sparkline([(p.get("modes") or {}).get(key) for p in history],
                                                   spark_width, mode["targetMs"]), style=style),
            )

    parts: list[RenderableType] = [status, overall]
    if pool:
        hit = pool["recentHitRate"] if pool["recentHitRate"] is not None else pool["hitRate"]
        line = Text("pool  ", style="bold")
        line.append(f"hit rate {pct(hit)}", style=_verdict(hit, pool["targetHitRate"], pool["alertHitRate"], True))
        line.append(f"  in use {pool['inUse']}/{pool['maxConnections']} ")
        line.append(bar(pool["utilization"], 20), style=WARN if (pool["utilization"] or 0) > 0.8 else OK)
        line.append(f"  wait avg {ms(pool['averageWaitMs'])} p95 {ms(pool['p95WaitMs'])}  timeouts {pool['timeouts']}")
        lookup = data["toolLookup"]
        line.append("\nlookups  ", style="bold")
        line.append(f"p95 {ms(lookup['p95Ms'])}", style=_verdict(lookup["p95Ms"], lookup["targetMs"]))
        line.append(f" (target {ms(lookup['targetMs'])})  cache {pct(lookup['cacheHitRate'])}  "
                    f"typos resolved {number(lookup['fuzzyResolutions'])}")
        parts.append(line)
    agents = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title="agents",
                   title_justify="left", title_style="bold")
    # Below 100 columns the type column gives way (`balance agents` shows it), so a row fits in 80.
    narrow = width < 100
    load_width = 4 if narrow else min(30, width - 82)
    headings = ["agent", "status", "load", "avg", "ok", "failed", "restarts", "ejections"]
    if not narrow:
        headings.insert(1, "type")
    for heading in headings:
        agents.add_column(heading, no_wrap=True, justify="left" if heading in ("agent", "type", "status", "load")
                          else "right")
    for agent in data["agents"]:
        healthy = agent["status"] in ("available", "busy")
        load = (agent["inFlight"] or 0) / agent["capacity"] if agent.get("capacity") else 0.0
        cells: list[RenderableType] = [
            agent["id"], Text(agent["status"], style=OK if healthy else BAD),
            Text(f"{bar(load, load_width)} {agent['inFlight']}/{agent['capacity']}",
                 style=WARN if load >= 1 else OK),
            ms(agent.get("ewmaMs")), number(agent.get("completed")), number(agent.get("failed")),
            number(agent.get("restarts")), number(agent.get("ejections")),
        ]
        if not narrow:
            cells.insert(1, agent["type"])
        agents.add_row(*cells)
    parts.append(agents if data["agents"] else Text("no agents", style=DIM))
    alerts = [(a, "firing", BAD) for a in firing] + [(a, "pending", WARN) for a in pending]
    alerts += [(a, "resolved", OK) for a in data["alerts"]["resolved"][:3]]
    lines = Text("\n").join(
        Text.assemble((f"{state.upper():9}", f"bold {style}"), alert["summary"]) for alert, state, style in alerts
    )
    parts.append(Panel(lines if alerts else Text("no alerts", style=DIM), title="alerts", title_align="left",
                       border_style=BAD if firing else (WARN if pending else DIM)))
    return Group(*parts)


def _age(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
