"""The systemd journal: what services write (their stdout and stderr, syslog(3),
sd_journal_send) as entries with the priority, identifier, pid and unit of each.

On Debian 12 the journal is where a host's own logs are (rsyslog and /var/log/syslog are
not installed by default). It is read through ``journalctl -o json -f``, a child process:
no libsystemd binding is needed, and journalctl follows rotation, vacuuming and
namespaces. It runs under ``setpriv --pdeathsig TERM`` when setpriv exists, so it ends
with the agent even when the agent is killed with -9.

Kernel messages are left out (the printk probe or the kmsg source reads them): only the
transports ``journal``, ``syslog`` and ``stdout``. Entries of the pids in
``exclude_pids`` (the hub of ``mohlog run``) and of the agent itself are skipped, so the
logs of shipping are not shipped.

Position: the cursor of the last entry handed on is kept in the state file; a restart
resumes just after it (nothing twice, nothing missed while the agent was down). The first
start begins at the end of the journal. If journalctl exits, it is started again from the
cursor (1 s, doubling to 30 s, between tries); a cursor it cannot seek to (a journal made
anew) is dropped and reading starts at the end.

Fields: see mohlog/journal.py.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from agent.sources.base import Emit, Source
from mohlog import log
from mohlog.journal import as_int, to_entry

TRANSPORTS = ("journal", "syslog", "stdout")


class JournalSource(Source):
    name = "journal"

    def __init__(self, state_file: Path, namespace: str = "", exclude_pids: list[int] | None
                 = None, journalctl: str = "journalctl", save_every_s: float = 1.0) -> None:
        super().__init__()
        self.state_file, self.namespace = state_file, namespace
        self.exclude = {os.getpid(), *(exclude_pids or [])}
        self.journalctl, self.save_every_s = journalctl, save_every_s
        self.host = os.uname().nodename
        self.cursor = self._load()
        self.proc: subprocess.Popen[bytes] | None = None

    def _load(self) -> str | None:
        try:
            cursor = json.loads(self.state_file.read_text()).get("cursor")
        except (OSError, ValueError, AttributeError):
            return None
        return cursor if isinstance(cursor, str) and cursor else None

    def save(self) -> None:
        if self.cursor is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"cursor": self.cursor}))
            tmp.replace(self.state_file)
        except OSError as err:
            log.agent.warning("cannot save the journal cursor to %s: %s", self.state_file, err)

    def command(self) -> list[str]:
        # --all: fields over 4 KiB (long messages) are printed, not null
        cmd = [self.journalctl, "-o", "json", "-f", "--all", "--no-pager"]
        if self.namespace:
            cmd.append(f"--namespace={self.namespace}")
        cmd += ["--after-cursor", self.cursor] if self.cursor else ["-n", "0"]
        cmd += [f"_TRANSPORT={t}" for t in TRANSPORTS]
        setpriv = shutil.which("setpriv")
        return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd

    def run_forever(self, emit: Emit) -> None:
        wait = 1.0
        while not self.stopping.is_set():
            errors = tempfile.TemporaryFile()     # read once it ends: it never fills a pipe
            try:
                self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE,
                                             stderr=errors, stdin=subprocess.DEVNULL)
            except OSError as err:
                errors.close()
                log.agent.error("journal source: cannot run journalctl: %s", err)
                self.counters["start_errors"] += 1
                self.stopping.wait(30.0)
                continue
            got = self._follow(self.proc, emit)
            err = self._end(self.proc, errors)
            if self.stopping.is_set():
                break
            if not got and self.cursor and "cursor" in err.lower():
                # a cursor journalctl cannot seek to (a journal made anew): from the end
                log.agent.warning("journal cursor not usable (%s): reading from the end", err)
                self.cursor = None
                self.state_file.unlink(missing_ok=True)
                self.counters["cursor_resets"] += 1
                continue
            self.save()
            self.counters["restarts"] += 1
            log.agent.warning("journalctl exited (%s): %s; again in %.0f s",
                              self.proc.returncode, err or "no message", wait)
            wait = 1.0 if got else min(30.0, wait * 2)
            self.stopping.wait(wait)
        self.save()

    def _follow(self, proc: subprocess.Popen[bytes], emit: Emit) -> int:
        """Entries of journalctl's output until it ends or the source stops; how many."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        rest, total, saved = b"", 0, 0.0
        try:
            while not self.stopping.is_set():
                if not sel.select(0.2):
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                batch = self._entries(lines)
                if batch:
                    emit(batch)
                    total += len(batch)
                now = time.monotonic()
                if now - saved >= self.save_every_s:
                    self.save()
                    saved = now
        finally:
            sel.close()
        return total

    def _entries(self, lines: list[bytes]) -> list[dict[str, Any]]:
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                doc = None
            if not isinstance(doc, dict):
                self.counters["invalid"] += 1
                continue
            cursor = doc.get("__CURSOR")
            if isinstance(cursor, str):
                self.cursor = cursor
            if as_int(doc.get("_PID"), 0) in self.exclude:
                self.counters["excluded"] += 1
                continue
            out.append(to_entry(doc, self.host))
        self.counters["entries"] += len(out)
        return out

    def _end(self, proc: subprocess.Popen[bytes], errors: Any) -> str:
        """Stop journalctl (if still running); the end of what it wrote on stderr."""
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        with errors:
            errors.seek(0)
            return errors.read().decode("utf-8", "replace").strip()[-500:]

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        super().stop(timeout)
