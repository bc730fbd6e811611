"""
The relay's web endpoint: its certificate and fingerprint, published so that
users can fetch them with C{relaynat trust} and compare the fingerprint with
one they got from the operator over another channel.

    GET /relay.pem      the certificate (PEM)
    GET /fingerprint    C{sha256:HEX} and a newline

Nothing here is secret, and nothing else is served.
"""

from __future__ import annotations

from twisted.web import pages
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import Data

from relaynat.identity import RelayIdentity

#: Where the certificate and the fingerprint are published; C{relaynat trust}
#: fetches the first when given only the endpoint's address.
CERTIFICATE_PATH = "/relay.pem"
FINGERPRINT_PATH = "/fingerprint"


class _Publication(Resource):
    """Only its children; the root itself is not found either."""

    def render(self, request: Request) -> bytes:
        # Reached only by a request whose path is empty (an absolute URI
        # without a path); every other unknown path gets Resource's 404.
        return pages.notFound().render(request)


def publicationResource(identity: RelayIdentity) -> Resource:
    """The resource tree serving C{identity}'s certificate and fingerprint."""
    root = _Publication()
    root.putChild(
        CERTIFICATE_PATH[1:].encode("ascii"),
        Data(identity.certificatePem, "application/x-pem-file"),
    )
    root.putChild(
        FINGERPRINT_PATH[1:].encode("ascii"),
        Data((identity.fingerprint + "\n").encode("ascii"), "text/plain; charset=us-ascii"),
    )
    return root
