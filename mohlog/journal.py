"""Records of the systemd journal (``journalctl -o json``) as mohlog entries: used by the
agent's journal source and by ``mohlog ingest`` (``journalctl -o json | mohlog ingest -``).

Fields: time = ``_SOURCE_REALTIME_TIMESTAMP`` (when the program logged) else
``__REALTIME_TIMESTAMP``; level from ``PRIORITY`` as for syslog (0-2 CRITICAL, 3 ERROR,
4 WARNING, 5-6 INFO, 7 DEBUG; auth and authpriv at priority ≤ 5 → SECURITY); process =
``SYSLOG_IDENTIFIER`` else ``_COMM``; pid = ``_PID`` else ``SYSLOG_PID``; tid = ``TID``;
host = ``_HOSTNAME``; metadata: unit, transport, priority, facility, and ``message_id``
and ``exe`` when present.
"""

from __future__ import annotations

from typing import Any

from mohlog.model import new_id, syslog_level


def is_record(doc: dict[str, Any]) -> bool:
    """Is ``doc`` a journal record (as journalctl -o json prints it)?"""
    return "__REALTIME_TIMESTAMP" in doc and "MESSAGE" in doc


def to_entry(doc: dict[str, Any], host: str) -> dict[str, Any]:
    """The entry of one journal record (``journalctl -o json``)."""
    msg = doc.get("MESSAGE")
    if isinstance(msg, list):               # not valid UTF-8: an array of bytes
        msg = bytes(msg).decode("utf-8", "replace")
    pri = as_int(doc.get("PRIORITY"), 6) & 7
    fac = as_int(doc.get("SYSLOG_FACILITY"), 3)
    usec = as_int(doc.get("_SOURCE_REALTIME_TIMESTAMP"), 0) or \
        as_int(doc.get("__REALTIME_TIMESTAMP"), 0)
    meta: dict[str, Any] = {"unit": doc.get("_SYSTEMD_UNIT") or doc.get("_SYSTEMD_USER_UNIT"),
                            "transport": doc.get("_TRANSPORT"), "priority": pri,
                            "facility": fac}
    for key, name in (("MESSAGE_ID", "message_id"), ("_EXE", "exe")):
        if isinstance(doc.get(key), str):
            meta[name] = doc[key]
    pid = as_int(doc.get("_PID"), 0) or as_int(doc.get("SYSLOG_PID"), 0)
    return {"id": new_id(), "timestamp": usec * 1000,
            "level": syslog_level(pri, fac),
            "source": "journal", "component": "APPLICATION",
            "host": _str(doc.get("_HOSTNAME")) or host, "pid": pid,
            "tid": as_int(doc.get("TID"), 0),
            "process": _str(doc.get("SYSLOG_IDENTIFIER")) or _str(doc.get("_COMM")),
            "message": msg if isinstance(msg, str) else "", "metadata": meta, "context": {}}


def as_int(v: Any, default: int) -> int:
    """``int(v)``, or ``default`` when v is none or not a number."""
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _str(v: Any) -> str:
    if isinstance(v, list):
        return bytes(v).decode("utf-8", "replace")
    return v if isinstance(v, str) else ""
