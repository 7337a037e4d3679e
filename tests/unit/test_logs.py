"""The JSON log line: one object, extras included, parseable."""

from __future__ import annotations

import json
import logging
from typing import Any

from rlsproxy.logs import JsonFormatter


def test_json_line_carries_extras() -> None:
    record = logging.LogRecord(
        "rlsproxy.server", logging.INFO, __file__, 1, "client %s", ("connected",), None
    )
    record.peer = "127.0.0.1:5000"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "client connected"
    assert line["level"] == "INFO" and line["logger"] == "rlsproxy.server"
    assert line["peer"] == "127.0.0.1:5000"
    assert line["ts"].endswith("+00:00")


def test_text_line_carries_extras_before_a_traceback() -> None:
    from rlsproxy.logs import TextFormatter

    record = logging.LogRecord("rlsproxy.server", logging.INFO, __file__, 1, "client connected", None, None)
    record.peer = "127.0.0.1:5000"
    record.role = "authenticated"
    line = TextFormatter().format(record)
    assert line.endswith("INFO rlsproxy.server: client connected peer=127.0.0.1:5000 role=authenticated")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("rlsproxy", logging.ERROR, __file__, 1, "bug", None, sys.exc_info())
    failed.peer = "x"
    first, *rest = TextFormatter().format(failed).splitlines()
    assert first.endswith("ERROR rlsproxy: bug peer=x")
    assert rest[-1] == "ValueError: boom"


def test_reconfigure_replaces_the_handler_only_when_level_or_format_changed() -> None:
    from rlsproxy.logs import TextFormatter, reconfigure

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    marker = logging.NullHandler()
    try:
        root.handlers[:] = [marker]
        reconfigure("INFO", "json", was=("INFO", "json"))
        assert root.handlers == [marker]  # nothing changed: the running handlers stay
        reconfigure("WARNING", "text", was=("INFO", "json"))
        assert root.level == logging.WARNING
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, TextFormatter)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_timestamps_read_as_the_logging_module_and_datetime_write_them() -> None:
    """Each formatter keeps its formatted second: a new second must still be written anew."""
    from datetime import UTC, datetime

    from rlsproxy.logs import TextFormatter

    text, json_formatter = TextFormatter(), JsonFormatter()
    for created in (1764000000.25, 1764000000.999, 1764000001.0, 1764003600.5):
        record = logging.LogRecord("rlsproxy", logging.INFO, __file__, 1, "m", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000 // 1
        asctime = logging.Formatter("%(asctime)s").format(record)
        assert text.format(record) == f"{asctime} INFO rlsproxy: m"
        iso = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert json.loads(json_formatter.format(record))["ts"] == iso


def test_info_line_writes_what_logger_info_would() -> None:
    """The direct path for the per-connection line: the same line as the logging module's, in both
    formats; none below the level; and the logging module itself whenever another handler listens."""
    import io

    from rlsproxy import logs

    root = logging.getLogger()
    saved_handlers, saved_level, saved_installed = root.handlers[:], root.level, logs._installed
    log = logging.getLogger("rlsproxy.server")
    fields: dict[str, object] = {"peer": "127.0.0.1:5000", "role": "authenticated", "anonymous": False}
    records: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        records.append(factory(*args, **kwargs))
        return records[-1]

    logging.setLogRecordFactory(counting)
    try:
        for fmt in ("text", "json"):
            logs.configure("INFO", fmt)
            stream = io.StringIO()
            root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
            log.info("client connected", extra=fields)
            made = len(records)
            logs.info_line(log, "client connected", fields)
            assert len(records) == made  # written directly: no LogRecord
            by_logging, direct = stream.getvalue().splitlines()
            if fmt == "text":  # the same after the timestamp (23 characters)
                expected = " INFO rlsproxy.server: client connected peer=127.0.0.1:5000 role=authenticated"
                assert direct[23:] == by_logging[23:] == expected + " anonymous=False"
            else:
                first, second = json.loads(by_logging), json.loads(direct)
                assert first.pop("ts")[:16] == second.pop("ts")[:16]
                assert first == second == {"level": "INFO", "logger": "rlsproxy.server",
                                           "message": "client connected", **fields}  # fmt: skip

        logs.configure("WARNING", "text")
        stream = io.StringIO()
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logs.info_line(log, "client connected", fields)
        assert stream.getvalue() == ""

        logs.configure("INFO", "text")
        root.handlers[0].setStream(io.StringIO())  # type: ignore[attr-defined]
        seen: list[logging.LogRecord] = []
        listener = logging.Handler()
        listener.emit = seen.append  # type: ignore[method-assign]
        root.addHandler(listener)  # as pytest's caplog does: it must get the record
        logs.info_line(log, "client connected", fields)
        got = [(r.getMessage(), getattr(r, "role", None)) for r in seen]
        assert got == [("client connected", "authenticated")]
    finally:
        logging.setLogRecordFactory(factory)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        logs._installed = saved_installed
