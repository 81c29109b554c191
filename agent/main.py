"""The agent: sources → pipeline → spool → hub, plus /metrics."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.pipeline import Pipeline
from agent.sinks.hub import HubSink
from agent.sources.base import Source
from agent.spool import Spool
from mohlog import log
from mohlog.dirlock import DirLock
from mohlog.errors import MohlogError


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.state = Path(cfg.state_dir)
        self.state.mkdir(mode=0o700, parents=True, exist_ok=True)   # (dirlock.private)
        # first: two agents on one state directory would both replay its spool
        self._dir_lock = DirLock(self.state, "agent")
        self._dir_lock.acquire()
        self.spool = Spool(self.state / "spool", cfg.spool_max_bytes)
        self.sink = HubSink(cfg.hub, cfg.read_token(), self.spool, cfg.hub_timeout_s,
                            token_file=None if cfg.token else cfg.token_file)
        self.pipeline = Pipeline(cfg, self.sink.submit, self._enrichers())
        self.sources: list[Source] = []
        self.ebpf: Any = None

    def _enrichers(self) -> list[Any]:
        out: list[Any] = []
        if self.cfg.enrich_proc:
            from agent.enrich.proc import ProcCache
            out.append(ProcCache(self.cfg.proc_root))
        if self.cfg.enrich_net:
            from agent.enrich.net import NetInfo
            out.append(NetInfo())
        return out

    def build_sources(self) -> list[Source]:
        cfg, out = self.cfg, []
        if cfg.ebpf:
            from agent.sources.ebpf import EbpfConfig, EbpfSource
            ecfg = EbpfConfig(**{"state_dir": str(self.state), **cfg.ebpf_config})
            ecfg.exclude_pids = [*ecfg.exclude_pids, *cfg.exclude_pids]
            self.ebpf = EbpfSource(ecfg)
            self.ebpf.load()
            out.append(self.ebpf)
        elif cfg.kmsg and os.access("/dev/kmsg", os.R_OK):
            from agent.sources.kmsg import KmsgConfig, KmsgSource
            try:
                out.append(KmsgSource(KmsgConfig(state_file=str(self.state / "kmsg.json"))))
            except PermissionError:     # kernel.dmesg_restrict: CAP_SYSLOG needed
                log.agent.info("the kernel log (/dev/kmsg) is not readable by this user "
                               "(kernel.dmesg_restrict = 1): not read; run the agent as "
                               "root for it")
        if cfg.files:
            from agent.sources.files import FilesSource
            out.append(FilesSource(cfg.files, self.state / "files.json", cfg.files_component,
                                   parse=cfg.files_parse, multiline=cfg.files_multiline))
        if cfg.journal and shutil.which("journalctl"):
            from agent.sources.journal import JournalSource
            out.append(JournalSource(self.state / "journal.json", cfg.journal_namespace,
                                     cfg.exclude_pids))
        elif cfg.journal:
            log.agent.info("no journalctl: the journal is not read")
        if cfg.syslog_udp or cfg.syslog_tcp:
            from agent.sources.syslog import SyslogSource
            out.append(SyslogSource(cfg.syslog_udp, cfg.syslog_tcp))
        if cfg.sdk_socket:
            from agent.sources.sdk_socket import SdkSocketConfig, SdkSocketSource
            out.append(SdkSocketSource(SdkSocketConfig(path=cfg.sdk_socket)))
        return out

    def start(self) -> None:
        if self.cfg.tune_runtime:  # before the threads take their malloc arenas
            from agent import tuning
            tuning.tune_malloc()
            self.pipeline.after_batch = tuning.trim
        self.sink.start()
        self.pipeline.start()
        self.sources = self.build_sources()
        started = []
        for src in self.sources:
            try:
                src.start(self.pipeline.accept)
                started.append(src.name)
            except MohlogError as err:
                log.agent.error("source %s not started: %s", src.name, err)
        if self.cfg.metrics_listen:
            from agent.metrics import serve
            serve(self, self.cfg.metrics_listen)
        if self.cfg.tune_runtime:
            from agent import tuning
            tuning.tune_gc()
        log.agent.info("agent running: %s → %s", ", ".join(started) or "no source",
                       self.cfg.hub)

    def stop(self, timeout: float = 10.0) -> None:
        for src in self.sources:
            src.stop()
            if hasattr(src, "close"):
                src.close()
        self.pipeline.stop()
        self.sink.wait_idle(timeout)
        self.sink.stop()
        self._dir_lock.release()

    def probe_stats(self) -> dict[str, dict[str, Any]]:
        return self.ebpf.stats()["probes"] if self.ebpf is not None else {}

    def drops(self) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter(self.pipeline.dropped)
        for name, st in self.probe_stats().items():
            out[("kernel", f"{name}_reserve")] += st.get("kernel_drops", 0)
            out[("kernel", f"{name}_missed")] += st.get("kernel_misses", 0)
        if self.ebpf is not None:
            out[("decode", "error")] += self.ebpf.stats().get("decode_errors", 0)
        for src in self.sources:
            for key, n in src.stats().items() if not hasattr(src, "loaded") else ():
                if key.startswith(("invalid", "line_too_long", "partial")):
                    out[("decode", f"{src.name}_{key}")] += n
        for level, n in self.spool.dropped.items():
            out[("spool", level)] += n
        out[("hub", "rejected")] += self.sink.counters["records_rejected"]
        return out

    def counters(self) -> dict[str, Any]:
        return {"events": {f"{s}/{p}": n for (s, p), n in self.pipeline.events.items()},
                "dropped": {f"{a}/{b}": n for (a, b), n in self.drops().items()},
                "shipped": self.sink.counters["records_shipped"],
                "spool_batches": self.spool.batches, "spool_bytes": self.spool.bytes}
