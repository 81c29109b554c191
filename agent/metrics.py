"""The agent's Prometheus /metrics: counters read from the agent's parts at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from agent.main import Agent


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Any]:
        a = self.agent
        ev = CounterMetricFamily("mohlog_agent_events", "Entries received from sources",
                                 labels=["source", "probe"])
        for (src, probe), n in sorted(a.pipeline.events.items()):
            ev.add_metric([src, probe], n)
        yield ev
        dr = CounterMetricFamily("mohlog_agent_dropped", "Entries dropped, by stage",
                                 labels=["stage", "reason"])
        for (stage, reason), n in sorted(a.drops().items()):
            dr.add_metric([stage, reason], n)
        yield dr
        sink = a.sink.counters
        yield _counter("mohlog_agent_shipped", "Records acknowledged by the hub",
                       sink["records_shipped"])
        yield _counter("mohlog_agent_rejected", "Records the hub refused as invalid",
                       sink["records_rejected"])
        yield _counter("mohlog_agent_ship_retries", "Failed sends, retried later",
                       sink["retries"])
        yield _gauge("mohlog_agent_spool_bytes", "Bytes waiting in the spool", a.spool.bytes)
        yield _gauge("mohlog_agent_spool_batches", "Batches waiting in the spool",
                     a.spool.batches)
        yield _gauge("mohlog_agent_spool_memory_bytes",
                     "Bytes of batches waiting in memory: the spool's disk refused them",
                     a.spool.memory_bytes)
        yield _counter("mohlog_agent_spool_disk_errors",
                       "Spool writes the disk refused (full, quota, I/O error)",
                       a.spool.disk_errors)
        yield _gauge("mohlog_agent_queue_records", "Entries waiting for a batch",
                     a.pipeline.depth)
        loaded = GaugeMetricFamily("mohlog_agent_probe_loaded", "1 when the probe runs",
                                   labels=["probe"])
        for name, st in a.probe_stats().items():
            loaded.add_metric([name], 1.0 if st.get("loaded") else 0.0)
        yield loaded


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def serve(agent: Agent, listen: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    ProcessCollector(registry=registry)
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    return registry
