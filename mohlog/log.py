"""Named loggers. Handlers are configured only at entry points (``setup``)."""

from __future__ import annotations

import logging
import sys
import time

import orjson

hub = logging.getLogger("mohlog.hub")
store = logging.getLogger("mohlog.store")
agent = logging.getLogger("mohlog.agent")
bpf = logging.getLogger("mohlog.bpf")
sdk = logging.getLogger("mohlog.sdk")
embeddings = logging.getLogger("mohlog.embeddings")
cli = logging.getLogger("mohlog.cli")

_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup(level: str = "INFO", json: bool = True) -> None:
    """Configure the root ``mohlog`` logger for an entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else logging.Formatter("%(message)s"))
    root = logging.getLogger("mohlog")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
