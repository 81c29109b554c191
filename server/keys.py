"""Typed aiohttp application state keys."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from server.auth import TokenStore
from server.config import HubConfig
from server.store import Store

STORE = web.AppKey("store", Store)
CONFIG = web.AppKey("config", HubConfig)
TOKENS = web.AppKey("tokens", TokenStore)
REGISTRY = web.AppKey("registry", CollectorRegistry)
