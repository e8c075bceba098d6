"""Metric names used by a PromQL expression: enough of PromQL's lexical rules to check dashboards and rules
against the names the system exports (monitoring/exported.py). promtool checks the full syntax."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                       "offset", "bool", "inf", "nan", "atan2", "start", "end"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{([^{}]*)\}")
_NAME_MATCHER = re.compile(r'__name__\s*(=~|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])")


@dataclass
class Names:
    """Series names an expression selects: exact names and `__name__=~` patterns."""

    exact: set[str] = field(default_factory=set)
    patterns: set[str] = field(default_factory=set)


def _strip_variables(expr: str) -> str:
    """Grafana's $__rate_interval, $__interval, ${var} and $var become a plain duration or value."""
    expr = re.sub(r"\$__\w+", "1m", expr)
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def metric_names(expr: str) -> Names:
    """The series names an expression reads (raises ValueError on unbalanced braces or quotes)."""
    expr = _strip_variables(expr)
    out = Names()
    for body in _BRACES.findall(expr):
        for op, value in _NAME_MATCHER.findall(body):
            (out.exact if op == "=" else out.patterns).add(value.replace("\\\\", "\\"))
    rest = _BRACES.sub(" ", expr)
    if "{" in rest or "}" in rest:
        raise ValueError(f"unbalanced braces in {expr!r}")
    rest = _STRING.sub(" ", rest)
    if '"' in rest or "'" in rest:
        raise ValueError(f"unbalanced quotes in {expr!r}")
    rest = _RANGE.sub(" ", _GROUPING.sub(" ", rest))
    for match in _IDENT.finditer(rest):
        word = match.group(1)
        after = rest[match.end():].lstrip()
        if after.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        out.exact.add(word)
    return out
