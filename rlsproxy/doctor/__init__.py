"""``rlsproxy doctor``: read a database's catalog and report what would let rows leak past RLS.

>>> findings = run_doctor(conn, config)           # conn: psycopg connection as an admin role
>>> [f"{f.severity} {f.check} {f.object}" for f in findings]

Modules: ``checks`` (run_doctor, the list of checks), ``checks_tables`` / ``checks_policies`` /
``checks_roles`` (one function per check), ``exprs`` (pglast analysis of policy expressions and
function bodies), ``catalog`` (shared catalog reads), ``report`` (text and JSON; the JSON schema
is in its docstring and in docs/doctor.md), ``cli`` (the command line). Deliberately does not
import ``cli``, so ``python -m rlsproxy.doctor.cli`` runs cleanly.
"""

from __future__ import annotations

from rlsproxy.doctor.base import Finding, Severity
from rlsproxy.doctor.checks import CHECK_IDS, DoctorError, examine, run_doctor
from rlsproxy.doctor.report import Report, to_json, to_text

__all__ = [
    "CHECK_IDS",
    "DoctorError",
    "Finding",
    "Report",
    "Severity",
    "examine",
    "run_doctor",
    "to_json",
    "to_text",
]
