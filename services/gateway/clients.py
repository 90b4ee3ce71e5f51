"""Who is on the other end of a request: the client address the gateway limits unauthenticated attempts by.

Behind nginx (every deployment, deploy/nginx/) the peer is the proxy, which overwrites `X-Real-IP` with
the client's address; that header is believed only from a trusted proxy (GATEWAY_TRUSTED_PROXIES, and a
Unix socket, which only the local nginx can reach), never from anyone else, who could forge it.
IPv6 clients are keyed by their /64, since one host can own a whole /64.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any


def parse_networks(spec: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip())


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_key(environ: Mapping[str, Any], trusted: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    peer_text = str(environ.get("REMOTE_ADDR") or "")
    peer = _address(peer_text)
    from_proxy = peer is None or any(peer in network for network in trusted)  # no address: our Unix socket
    client = peer
    if from_proxy:
        forwarded = _address(str(environ.get("HTTP_X_REAL_IP") or ""))
        client = forwarded or peer
    if client is None:
        return "unknown"
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{client}/64", strict=False))
    return str(client.ipv4_mapped or client) if isinstance(client, ipaddress.IPv6Address) else str(client)
