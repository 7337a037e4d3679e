"""Process logging as configured by `log:`: JSON lines (the default, for log shippers) or plain text.

Every client connection logs a line (log.connections), so the formatters are written for it:
the timestamp's second is formatted once per second, and a record's extras are found without
testing each of its standard attributes. `info_line` writes that line without a LogRecord and
the handler chain when nothing but the handler `configure` installed would see it.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import TextIO

_RECORD_OWN = vars(logging.LogRecord("", 0, "", 0, "", None, None))
# Attributes every LogRecord has; anything else was passed with extra= and belongs in the line.
_STANDARD = frozenset(_RECORD_OWN) | {"message", "asctime"}
# LogRecord.__init__ sets all of its attributes, always the same number, before makeRecord adds
# the extras: those are past the first _OWN keys (formatters may add message/asctime later).
_OWN = len(_RECORD_OWN)

Extras = Iterable[tuple[str, object]]
Handler = logging.StreamHandler[TextIO]
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

    def line(self, created: float, msecs: int, level: str, name: str, message: str, extras: Extras) -> str:
        fields: dict[str, object] = {
            # As datetime's isoformat(timespec="milliseconds") in UTC writes it.
            "ts": f"{self._seconds(created)}.{msecs:03d}+00:00",
            "level": level,
            "logger": name,
            "message": message,
        }
        fields.update(extras)
        return _encode(fields)

    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        if record.exc_info:
            extras.append(("exception", self.formatException(record.exc_info)))
        return self.line(
            record.created, int(record.msecs), record.levelname, record.name, record.getMessage(), extras
        )


class TextFormatter(logging.Formatter):
    """One line: time, level, logger, message, then the extras as key=value (peer, role, ...).

    The layout of "%(asctime)s %(levelname)s %(name)s: %(message)s" (local time, milliseconds
    after a comma), any traceback on the lines after it.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._seconds = _Seconds("%Y-%m-%d %H:%M:%S", utc=False)

    def line(self, created: float, msecs: int, level: str, name: str, message: str, extras: Extras) -> str:
        line = f"{self._seconds(created)},{msecs:03d} {level} {name}: {message}"
        fields = " ".join([f"{key}={value}" for key, value in extras])  # a list: join makes one anyway
        return f"{line} {fields}" if fields else line

    def format(self, record: logging.LogRecord) -> str:
        message, extras = record.getMessage(), _extras(record)
        line = self.line(record.created, int(record.msecs), record.levelname, record.name, message, extras)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


# The handler configure() installed, and the formatter it writes with.
_installed: tuple[Handler, JsonFormatter | TextFormatter] | None = None


def info_line(logger: logging.Logger, message: str, fields: dict[str, object]) -> None:
    """logger.info(message, extra=fields), for a line every client connection writes.

    In the proxy process, where configure() installed the only handler, the line goes straight
    to that handler's stream in its format: measured in place during pgbench -C, the line cost
    15-20 µs of proxy user CPU per connection through the logging module, 8-12 this way.
    Anywhere else (another handler or a filter on the way, such as pytest's caplog; or
    configure() never called) it is logger.info.
    """
    installed = _installed
    if installed is None or not logger.isEnabledFor(logging.INFO) or not _only(logger, installed[0]):
        logger.info(message, extra=fields)
        return
    handler, formatter = installed
    created = time.time()
    msecs = int((created - int(created)) * 1000)
    line = formatter.line(created, msecs, "INFO", logger.name, message, fields.items())
    handler.acquire()  # the handler's own lock: whole lines, also against threads that log
    try:
        handler.stream.write(line + handler.terminator)
        handler.stream.flush()
    finally:
        handler.release()


def _only(logger: logging.Logger, handler: logging.Handler) -> bool:
    """`handler` is the only one the logger's records reach, and no filter is on the way."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return False
        if node.handlers:
            only = node is logging.root and node.handlers == [handler]
            return only and not handler.filters and handler.level <= logging.INFO
        if not node.propagate:
            return False
        node = node.parent
    return False


def configure(level: str, fmt: str) -> None:
    # Neither format shows the caller, thread or process, so the records need not carry them: the
    # logging module's documented switches, worth a few µs per connection's log line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _installed
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _installed = (handler, formatter)


def reconfigure(level: str, fmt: str, *, was: tuple[str, str]) -> None:
    """On reload: a changed level or format takes effect at once (unchanged, the handlers stay)."""
    if (level, fmt) != was:
        configure(level, fmt)
