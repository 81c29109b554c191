"""Agent settings: a typed dataclass from an explicit --config file (JSON or TOML) and flags.

Every field is documented in docs/agent.md (a test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mohlog.errors import InvalidInput
from mohlog.model import COMPONENTS, LEVELS
from mohlog.settings import check_types, hub_url, read_settings, size_bytes

DEFAULT_HUB = "http://127.0.0.1:7480"


@dataclass
class DropRule:
    # Field of the entry (level, component, source, host, process, message, metadata.<key>).
    field: str
    # Python regular expression searched in the field's text; a match drops the entry.
    regex: str


@dataclass
class AgentConfig:
    # Hub base URL the batches are shipped to.
    hub: str = DEFAULT_HUB
    # Bearer token with the ingest role (prefer token_file: it stays out of `ps`).
    token: str | None = None
    # File holding the token.
    token_file: str | None = None
    # Directory for the spool, file positions, BTF cache and kmsg position.
    state_dir: str = "/var/lib/mohlog-agent"
    # Load the eBPF probes (needs root); False runs the other sources only.
    ebpf: bool = True
    # eBPF settings (agent.sources.ebpf.EbpfConfig fields, see docs/probes.md).
    ebpf_config: dict[str, Any] = field(default_factory=dict)
    # Read /dev/kmsg when eBPF is off (with eBPF on, its printk probe reads it).
    kmsg: bool = True
    # Log files or glob patterns to tail (rotation and truncation handled).
    files: list[str] = field(default_factory=list)
    # Component of lines read from files.
    files_component: str = "APPLICATION"
    # Take the time, level, host, process and pid of file lines from their headers
    # (syslog, ISO-8601, Apache, nginx, logcat... see mohlog/lines.py); False keeps each
    # line whole, stamped when read.
    files_parse: bool = True
    # With files_parse: lines without a header (a traceback) join the entry of the line
    # with one before them; an entry is shipped when the next header comes or 1 s later.
    files_multiline: bool = True
    # Read the systemd journal (what services log; kernel messages excluded) when
    # journalctl exists: from its end on the first start, then from the saved cursor.
    journal: bool = True
    # Journal namespace to read ("" = the system journal; see systemd-journald@.service).
    journal_namespace: str = ""
    # Syslog listen addresses over UDP ("HOST:PORT"), RFC 3164 and 5424.
    syslog_udp: list[str] = field(default_factory=list)
    # Syslog listen addresses over TCP (octet counting or newline framing).
    syslog_tcp: list[str] = field(default_factory=list)
    # Unix socket of the SDK ("" turns the SDK socket off).
    sdk_socket: str = "/run/mohlog/sdk.sock"
    # Minimum level per component ({"KERNEL": "WARNING"}); "*" applies to every component.
    min_level: dict[str, str] = field(default_factory=dict)
    # Entries matching any rule are dropped early (never CRITICAL or SECURITY ones).
    drop: list[DropRule] = field(default_factory=list)
    # Most records per batch shipped.
    batch_max_records: int = 10_000
    # Records queued that make a batch due; it takes what is queued, up to batch_max_records
    # (full-size batches only from a backlog, e.g. in a storm; fewer entries in memory).
    batch_cut_records: int = 5_000
    # Most bytes per batch before compression (NDJSON lines; for Arrow batches the JSON of
    # metadata and context plus the message and 200 bytes per record).
    batch_max_bytes: int = 8 << 20
    # Body of the batches shipped: "arrow" (an Arrow IPC stream: the hub takes it without
    # parsing JSON, ~20x cheaper for it) or "ndjson" (for hubs without Arrow ingest).
    batch_format: str = "arrow"
    # Seconds a record may wait before its batch is shipped.
    batch_max_delay_s: float = 0.5
    # Records waiting between the sources and the shipper before new ones are dropped.
    queue_max_records: int = 500_000
    # Disk space for batches waiting for the hub; when full the lowest levels go first.
    spool_max_bytes: int = 1 << 30
    # Root of the /proc tree used for enrichment (tests point it at a fake tree).
    proc_root: str = "/proc"
    # Add process context (exe, cmdline, user, parents, cgroup, container) to entries.
    enrich_proc: bool = True
    # Add network context (interface, addresses, netns) to network events.
    enrich_net: bool = True
    # Address of the agent's Prometheus /metrics ("" turns it off).
    metrics_listen: str = "127.0.0.1:7481"
    # Seconds to wait for the hub per request.
    hub_timeout_s: float = 30.0
    # Freeze start-up objects and raise the GC thresholds; glibc malloc with 2 arenas and a
    # heap kept through backlogs, trimmed after each batch once the agent keeps up
    # (agent/tuning.py): ~40% less CPU per entry in event storms, bounded memory after.
    tune_runtime: bool = True
    # Pids of other processes to ignore in the kernel (the hub's, with `mohlog run`).
    exclude_pids: list[int] = field(default_factory=list)

    def read_token(self) -> str | None:
        if self.token:
            return self.token
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError as err:
                raise InvalidInput(f"cannot read token file {self.token_file}: {err}") from err
        return None


def load(path: Path | None, overrides: dict[str, Any]) -> AgentConfig:
    """Settings from an explicit file, then non-None overrides (flags)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_settings(path, "agent"))
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(AgentConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInput(f"unknown agent settings: {', '.join(unknown)}", valid=sorted(known))
    if isinstance(values.get("sdk_socket"), dict):
        values["sdk_socket"] = values["sdk_socket"].get("path", "")
    for name in ("spool_max_bytes", "batch_max_bytes"):     # "2G" as well as bytes
        if name in values:
            values[name] = size_bytes(values[name], name)
    check_types(AgentConfig, values, "agent")
    values["drop"] = [_drop_rule(r) for r in values.get("drop", [])]
    cfg = AgentConfig(**values)
    cfg.hub = hub_url(str(cfg.hub))
    check(cfg)
    return cfg


def _drop_rule(rule: Any) -> DropRule:
    if isinstance(rule, DropRule):
        return rule
    if not isinstance(rule, dict):
        raise InvalidInput(f"agent setting drop: each rule is a table, not {rule!r}")
    known = {f.name for f in fields(DropRule)}
    if set(rule) - known:
        raise InvalidInput(f"agent setting drop: unknown key(s) {sorted(set(rule) - known)}",
                           valid=sorted(known))
    check_types(DropRule, rule, "agent drop rule")
    return DropRule(**rule)


def check(cfg: AgentConfig) -> None:
    for comp, level in cfg.min_level.items():
        if comp != "*" and comp not in COMPONENTS:
            raise InvalidInput(f"min_level: unknown component {comp!r}", valid=list(COMPONENTS))
        if level not in LEVELS:
            raise InvalidInput(f"min_level: unknown level {level!r}", valid=list(LEVELS))
    if cfg.files_component not in COMPONENTS:
        raise InvalidInput(f"unknown files_component {cfg.files_component!r}",
                           valid=list(COMPONENTS))
    if cfg.batch_max_records < 1 or cfg.batch_cut_records < 1 or cfg.batch_max_bytes < 1024:
        raise InvalidInput("batch_max_records and batch_cut_records must be >= 1, "
                           "batch_max_bytes >= 1024")
    if cfg.batch_format not in ("arrow", "ndjson"):
        raise InvalidInput(f"unknown batch_format {cfg.batch_format!r}",
                           valid=["arrow", "ndjson"])
