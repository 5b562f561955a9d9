"""Which Host headers the server answers: its defence against DNS rebinding.

A web page whose domain is re-pointed at 127.0.0.1 sends its own domain as Host; a server that answers
only the names it is reached by refuses it with 400. Starlette's TrustedHostMiddleware does this job, but
before Starlette 1.x it cut a Host header at its first ':' and compared it case-sensitively, so
`[::1]:8000` and `LOCALHOST` were refused on the versions imgcls supports (fastapi>=0.110, starlette>=0.36);
`HostCheck` applies the same patterns to the Host parsed as RFC 3986 writes it.
"""
from __future__ import annotations

import ipaddress

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")  # as a Host header writes them: IPv6 in brackets
ANY_ADDRESS = ("0.0.0.0", "::", "")


def trusted_hosts(host: str, named: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The Host names a server bound to `host` answers to: its own address (with the loopback names
    when it listens on loopback) and those `named`. Empty, meaning any, when bound to every address
    with none named: the server cannot know every name and address clients reach it by (LAN
    addresses, mDNS names, proxies), refusing them would break `--host 0.0.0.0` for its common use,
    and such a server is already open to whoever can reach the machine."""
    if host in ANY_ADDRESS and not named:
        return ()
    own = () if host in ANY_ADDRESS else (f"[{host}]" if ":" in host else host,)
    if host in ANY_ADDRESS or is_loopback(host):  # every address includes loopback
        own += LOOPBACK_NAMES
    return tuple(dict.fromkeys((*own, *named)))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it is reachable from elsewhere
        return False


def host_name(header: str) -> str:
    """The name in a Host header, lower-cased and without its port: '[::1]:8000' -> '[::1]'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1]  # no closing bracket: '' , which no pattern matches
    return header.partition(":")[0]


def answers(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether a host name matches one of the patterns: a name, '*.example.com' or '*'."""
    return any(pattern in ("*", name) or (pattern.startswith("*.") and name.endswith(pattern[1:]))
               for pattern in patterns)


class HostCheck:
    """ASGI middleware: a request whose Host is not one of `allowed` gets 400 before anything else runs."""

    def __init__(self, app, allowed: tuple[str, ...]):
        self.app, self.allowed = app, tuple(pattern.lower() for pattern in allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and self.allowed:
            name = host_name(Headers(scope=scope).get("host", ""))
            if not answers(name, self.allowed):
                refusal = (f"Invalid host header: this server does not answer to {name or 'an empty name'!r}; "
                           "start it with --allowed-host NAME to add a name")
                await PlainTextResponse(refusal, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)
