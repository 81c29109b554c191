"""Network context for network events: the interface owning the local address, its
addresses, and the network namespace (pyroute2, refreshed periodically, never per event)."""

from __future__ import annotations

import os
import time
from typing import Any

from mohlog import log

NET_EVENTS = frozenset({"tcp_state", "tcp_retransmit", "tcp_reset"})


class NetInfo:
    def __init__(self, refresh_s: float = 30.0) -> None:
        self.refresh_s = refresh_s
        self._at = 0.0
        self._by_addr: dict[str, str] = {}
        self._addrs: dict[str, list[str]] = {}
        self.netns = _netns_inode()
        self.errors = 0

    def refresh(self) -> None:
        try:
            from pyroute2 import IPRoute
            with IPRoute() as ipr:
                names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
                by_addr, addrs = {}, {}
                for a in ipr.get_addr():
                    name = names.get(a["index"], str(a["index"]))
                    ip = a.get_attr("IFA_ADDRESS")
                    by_addr[ip] = name
                    addrs.setdefault(name, []).append(f"{ip}/{a['prefixlen']}")
        except Exception as err:  # noqa: BLE001 - enrichment is best effort
            self.errors += 1
            log.agent.warning("network enrichment refresh failed: %s", err)
            self._at = time.monotonic()
            return
        self._by_addr, self._addrs = by_addr, addrs
        self._at = time.monotonic()

    def __call__(self, entry: dict[str, Any]) -> None:
        meta = entry.get("metadata") or {}
        if meta.get("event") not in NET_EVENTS:
            return
        if time.monotonic() - self._at > self.refresh_s:
            self.refresh()
        ifname = self._by_addr.get(str(meta.get("saddr", "")))
        net: dict[str, Any] = {"netns": meta.get("netns") or self.netns}
        if ifname is not None and (not meta.get("netns") or meta.get("netns") == self.netns):
            net["ifname"] = ifname
            net["addresses"] = self._addrs.get(ifname, [])
        entry.setdefault("context", {})["net"] = net


def _netns_inode() -> int | None:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None
