"""
The relay's web endpoint: its certificate and fingerprint, published so that
users can fetch them with C{relaynat trust} and compare the fingerprint with
one they got from the operator over another channel; whether it runs; and
its metrics, for the operator only.

    GET /               a page: the fingerprint, and how to trust this relay
    GET /relay.pem      the certificate (PEM)
    GET /fingerprint    C{sha256:HEX} and a newline
    GET /healthz        C{ok} and a newline while the relay runs
    GET /metrics        Prometheus metrics (L{relaynat.metrics}), to the
                        networks of C{[relay] metrics_allow} only (loopback
                        by default): they name servers and count users

Nothing else is served, and nothing but /metrics says anything a stranger
should not know.
"""

from __future__ import annotations

import html
import ipaddress
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.twisted import MetricsResource
from twisted.logger import Logger
from twisted.web import pages
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import Data

from relaynat.identity import RelayIdentity

_log = Logger()

#: Where the certificate and the fingerprint are published; C{relaynat trust}
#: fetches the first when given only the endpoint's address.
CERTIFICATE_PATH = "/relay.pem"
FINGERPRINT_PATH = "/fingerprint"


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>relaynat relay</title></head><body>
<h1>relaynat relay</h1>
<p>This relay's key has the fingerprint</p>
<pre>{fingerprint}</pre>
<p>Check it with the one the relay's operator gave you (by another way than
this page), then save the relay's certificate:</p>
<pre>relaynat trust {base}{certificate} --expect {fingerprint} --out relay.pem</pre>
<p>and give <code>relay_key = "{fingerprint}"</code> (or
<code>relay_key = "relay.pem"</code>) in your client's or skeleton's file.</p>
</body></html>
"""


class _Publication(Resource):
    """The page at C{/}, and the children."""

    def __init__(self, identity: RelayIdentity) -> None:
        super().__init__()
        self.identity = identity

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)  # type: ignore[no-any-return]

    def render_GET(self, request: Request) -> bytes:
        host = request.getRequestHostname().decode("ascii", "replace")
        port = request.getHost().port
        base = html.escape(f"http://{host}:{port}", quote=True)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return _PAGE.format(
            fingerprint=self.identity.fingerprint, base=base, certificate=CERTIFICATE_PATH
        ).encode("utf-8")


def _health() -> Resource:
    """C{/healthz}: answered while the process runs."""
    return Data(b"ok\n", "text/plain; charset=us-ascii")


class _Allowed(Resource):
    """C{inner}, to clients from C{networks} only; others get 403 and why."""

    isLeaf = True

    def __init__(self, inner: Resource, networks: tuple[str, ...]) -> None:
        super().__init__()
        self.inner = inner
        self.networks = [ipaddress.ip_network(n) for n in networks]

    def render(self, request: Request) -> bytes:
        peer = getattr(request.getClientAddress(), "host", "")
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            address = None
        if address is not None and any(address in n for n in self.networks):
            return self.inner.render(request)  # type: ignore[no-any-return]
        _log.warn("metrics refused to {peer}: not in metrics_allow", peer=peer)
        return pages.forbidden(
            "Forbidden", "The metrics are for the networks of metrics_allow in the relay's file."
        ).render(request)


def publicationResource(
    identity: RelayIdentity,
    metrics: CollectorRegistry | None = None,
    metricsAllow: tuple[str, ...] = ("127.0.0.0/8", "::1/128"),
) -> Resource:
    """
    The resource tree serving C{identity}'s certificate and fingerprint,
    the health check, and C{metrics} if given.
    """
    root = _Publication(identity)
    root.putChild(b"healthz", _health())
    if metrics is not None:
        root.putChild(
            b"metrics", _Allowed(cast(Resource, MetricsResource(registry=metrics)), metricsAllow)
        )
    root.putChild(
        CERTIFICATE_PATH[1:].encode("ascii"),
        Data(identity.certificatePem, "application/x-pem-file"),
    )
    root.putChild(
        FINGERPRINT_PATH[1:].encode("ascii"),
        Data((identity.fingerprint + "\n").encode("ascii"), "text/plain; charset=us-ascii"),
    )
    return root


def metricsResource(registry: CollectorRegistry) -> Resource:
    """
    A skeleton's or a client's own metrics endpoint: C{/metrics} and
    C{/healthz}, to whoever reaches the endpoint its file names (bind it to
    127.0.0.1 or a private network).
    """
    root = Resource()
    root.putChild(b"healthz", _health())
    root.putChild(b"metrics", cast(Resource, MetricsResource(registry=registry)))
    return root
