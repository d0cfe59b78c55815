"""Helpers for Strata Python handlers.

    from strata import Response

    def handle(req):
        return Response(201, {"content-type": "text/plain"}, "created")

The bootstrap loads this module before your code, so ``import strata`` always
resolves to this file (a ``strata.py`` of your own would be shadowed).
"""

__all__ = ["Response"]


class Response:
    """An explicit HTTP response returned by a handler.

    status:  int HTTP status code (100-999).
    headers: dict name -> value (a list/tuple value gives a repeated header) or
             a list of (name, value) pairs; None for no headers.
    body:    bytes-like (sent as is), str (UTF-8 encoded), None (empty), or any
             other JSON-serialisable value (dict, list, ...) which is JSON-encoded.

    When no content-type header is given and the body is not empty, one is
    added: text/plain; charset=utf-8 for str, application/json for JSON values,
    application/octet-stream for bytes.
    """

    __slots__ = ("status", "headers", "body")

    def __init__(self, status=200, headers=None, body=b""):
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self):
        return "Response(status=%r, headers=%r, body=%r)" % (self.status, self.headers, self.body)

    def __eq__(self, other):
        if not isinstance(other, Response):
            return NotImplemented
        return (self.status, self.headers, self.body) == (other.status, other.headers, other.body)

    __hash__ = None
