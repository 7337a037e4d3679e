"""Rendering findings: JSON for machines, a grouped table for people.

JSON (``--format json``), stable; ``version`` changes only if a field changes meaning or goes::

    {
      "version": 1,
      "database": "app",                 // the database examined
      "server_version": "18.0",          // PostgreSQL's server_version
      "findings": [                      // sorted by severity (error, warning, info), check, object
        {
          "severity": "error",           // "error" | "warning" | "info"
          "check": "rls-disabled",       // stable kebab-case check id
          "object": "public.notes",      // what it is about: a table, policy "x" on t, role r, ...
          "message": "...",              // what is wrong and why it matters
          "fix": "ALTER TABLE ..."       // SQL that fixes it (lines starting -- are advice)
        }
      ],
      "summary": {"error": 0, "warning": 0, "info": 0}
    }

Text: one block per severity, each finding as ``check  object`` then its message and fix,
coloured with ANSI escapes only when the output is a terminal (and NO_COLOR is unset), ending
with a summary line, or "No findings: the RLS posture looks right." when there is nothing.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from rlsproxy.doctor.base import SEVERITIES, Finding, Severity

JSON_VERSION = 1
CLEAN = "No findings: the RLS posture looks right."

_COLOURS: dict[str, str] = {"error": "\033[1;31m", "warning": "\033[1;33m", "info": "\033[1;36m"}
_BOLD, _DIM, _RESET = "\033[1m", "\033[2m", "\033[0m"
_WIDTH = 100


@dataclass(frozen=True)
class Report:
    database: str
    server_version: str
    schemas: tuple[str, ...]
    findings: tuple[Finding, ...]

    def summary(self) -> dict[Severity, int]:
        return {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES}

    def fails(self, fail_on: Severity) -> bool:
        """True when a finding is at or above ``fail_on`` (error > warning > info)."""
        limit = SEVERITIES.index(fail_on)
        return any(SEVERITIES.index(f.severity) <= limit for f in self.findings)


def sorted_findings(findings: Sequence[Finding]) -> tuple[Finding, ...]:
    return tuple(sorted(findings, key=Finding.sort_key))


def to_json(report: Report) -> str:
    document = {
        "version": JSON_VERSION,
        "database": report.database,
        "server_version": report.server_version,
        "findings": [f.as_dict() for f in sorted_findings(report.findings)],
        "summary": report.summary(),
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def to_text(report: Report, colour: bool = False) -> str:
    def paint(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if colour else text

    schemas = ", ".join(report.schemas) or "none"
    lines = [
        f"rlsproxy doctor: database {report.database} (PostgreSQL {report.server_version}); "
        f"exposed schemas: {schemas}",
        "",
    ]
    findings = sorted_findings(report.findings)
    if not findings:
        return "\n".join([*lines, CLEAN]) + "\n"
    width = max(len(f.check) for f in findings) + 2
    for severity in SEVERITIES:
        group = [f for f in findings if f.severity == severity]
        if not group:
            continue
        lines.append(paint(f"{severity.upper()} ({len(group)})", _COLOURS[severity]))
        for f in group:
            lines.append(f"  {paint(f.check.ljust(width), _BOLD)}{f.object}")
            lines += textwrap.wrap(f.message, _WIDTH, initial_indent="      ", subsequent_indent="      ")
            fix_lines = f.fix.splitlines() or [""]
            lines.append(paint(f"      fix: {fix_lines[0]}", _DIM))
            lines += [paint(f"           {line}", _DIM) for line in fix_lines[1:]]
        lines.append("")
    counts = report.summary()
    lines.append(
        f"Summary: {_plural(counts['error'], 'error')}, {_plural(counts['warning'], 'warning')}, "
        f"{counts['info']} info"
    )
    return "\n".join(lines) + "\n"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
