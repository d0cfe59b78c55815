"""Echoes the request back: method, path, query, headers and the body (base64, so binary
bodies survive the round trip)."""
import base64


def handle(req):
    return {
        "method": req.method,
        "path": req.path,
        "query": req.query,
        "query_string": req.query_string,
        "headers": req.headers,
        "body_base64": base64.b64encode(req.body).decode(),
        "body_length": len(req.body),
    }
