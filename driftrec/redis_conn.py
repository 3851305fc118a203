"""Redis clients from a URL: one server, or a Redis Cluster.

``redis://``, ``rediss://`` and ``unix://`` name one server (redis-py's own URL forms).
``redis+cluster://[user:password@]host:port[,host:port...][/0]`` (``rediss+cluster://`` with TLS)
names a Redis Cluster by one or more seed nodes; the client discovers the rest. Every driftrec
key carries a hash tag (``docs/redis-keys.md``), so each multi-key operation stays in one slot.
"""

from __future__ import annotations

import logging
from typing import Any, cast
from urllib.parse import unquote

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as acluster
import redis.cluster as scluster

from driftrec.errors import DriftrecError

__all__ = ["CLUSTER_SCHEMES", "is_cluster_url", "cluster_nodes", "async_client", "sync_client",
           "RedisUrlError"]

logger = logging.getLogger(__name__)

#: Cluster URL scheme -> the scheme of its nodes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class RedisUrlError(DriftrecError, ValueError):
    """A Redis URL driftrec cannot use."""


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Seed nodes of a cluster URL and the connection options it carries (credentials, TLS)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in CLUSTER_SCHEMES:
        raise RedisUrlError(f"not a cluster URL: {url!r}")
    netloc, _, path = rest.partition("/")
    if path.split("?", 1)[0] not in ("", "0"):
        raise RedisUrlError("Redis Cluster has one database: the URL path must be empty or /0")
    opts: dict[str, Any] = {}
    if "@" in netloc:
        cred, _, netloc = netloc.rpartition("@")
        user, sep, password = cred.partition(":")
        if sep:
            opts["username"], opts["password"] = unquote(user) or None, unquote(password)
        else:
            opts["password"] = unquote(user)
    nodes: list[tuple[str, int]] = []
    for part in filter(None, netloc.split(",")):
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            host, port = part, "6379"
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise RedisUrlError(f"no seed node in {url!r}")
    if CLUSTER_SCHEMES[scheme.lower()] == "rediss":
        opts["ssl"] = True
    return nodes, opts


def async_client(url: str, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client for ``url``; a :class:`redis.asyncio.RedisCluster` for a cluster URL.

    Typed as ``Redis``: the cluster client answers every command driftrec sends (single-key
    commands, non-transactional pipelines, scripts, ``scan_iter``) the same way.
    """
    if not is_cluster_url(url):
        return aioredis.Redis.from_url(url, **kwargs)
    nodes, opts = cluster_nodes(url)
    kwargs.pop("health_check_interval", None)  # per-connection checks: the cluster client has its own
    kwargs.setdefault("protocol", 2)  # driftrec parses RESP2 replies (flat WITHSCORES lists)
    return cast(aioredis.Redis, acluster.RedisCluster(
        startup_nodes=[acluster.ClusterNode(h, p) for h, p in nodes], **opts, **kwargs))


def sync_client(url: str, **kwargs: Any) -> redis.Redis:
    """A blocking client for ``url``; a :class:`redis.cluster.RedisCluster` (typed as ``Redis``,
    see :func:`async_client`) for a cluster URL."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, **kwargs)
    nodes, opts = cluster_nodes(url)
    kwargs.setdefault("protocol", 2)
    return cast(redis.Redis, scluster.RedisCluster(
        startup_nodes=[scluster.ClusterNode(h, p) for h, p in nodes], **opts, **kwargs))
