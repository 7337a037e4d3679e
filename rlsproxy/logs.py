"""Process logging as configured by `log:`: JSON lines (the default, for log shippers) or plain text.

Every client connection logs a line, so the formatters are written for it: the timestamp's
second is formatted once per second, and a record's extras are found without testing each of
its standard attributes (about 7 µs of 9 per line in the logging module's general path).
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time

# Attributes every LogRecord has; anything else was passed with extra= and belongs in the line.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# LogRecord.__init__ sets all of its attributes, always the same number, before makeRecord adds
# the extras: those are past the first _OWN keys (formatters may add message/asctime later).
_OWN = len(vars(logging.LogRecord("", 0, "", 0, "", None, None)))

_encode = json.JSONEncoder(default=str, ensure_ascii=False).encode  # json.dumps builds one per call


def _extras(record: logging.LogRecord) -> list[tuple[str, object]]:
    return [
        (key, value)
        for key, value in itertools.islice(vars(record).items(), _OWN, None)
        if key not in _STANDARD and not key.startswith("_")
    ]


class _Seconds:
    """strftime of a timestamp's whole second, done again only when the second changes."""

    def __init__(self, fmt: str, *, utc: bool) -> None:
        self._fmt = fmt
        self._convert = time.gmtime if utc else time.localtime
        self._last = (-1, "")  # one tuple, replaced whole: a thread logging meanwhile sees a pair

    def __call__(self, created: float) -> str:
        second = int(created)
        last_second, text = self._last
        if second != last_second:
            text = time.strftime(self._fmt, self._convert(second))
            self._last = (second, text)
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._seconds = _Seconds("%Y-%m-%dT%H:%M:%S", utc=True)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            # As datetime's isoformat(timespec="milliseconds") in UTC writes it.
            "ts": f"{self._seconds(record.created)}.{int(record.msecs):03d}+00:00",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encode(line)


class TextFormatter(logging.Formatter):
    """One line: time, level, logger, message, then the extras as key=value (peer, role, ...).

    The layout of "%(asctime)s %(levelname)s %(name)s: %(message)s" (local time, milliseconds
    after a comma), any traceback on the lines after it.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._seconds = _Seconds("%Y-%m-%d %H:%M:%S", utc=False)

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self._seconds(record.created)},{int(record.msecs):03d} {record.levelname} "
            f"{record.name}: {record.getMessage()}"
        )
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{key}={value}" for key, value in extras)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def configure(level: str, fmt: str) -> None:
    # Neither format shows the caller, thread or process, so the records need not carry them: the
    # logging module's documented switches, worth a few µs per connection's log line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def reconfigure(level: str, fmt: str, *, was: tuple[str, str]) -> None:
    """On reload: a changed level or format takes effect at once (unchanged, the handlers stay)."""
    if (level, fmt) != was:
        configure(level, fmt)
