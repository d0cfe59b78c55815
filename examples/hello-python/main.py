import os

GREETING = os.environ.get("GREETING", "Hello")


def handle(req):
    who = req.text().strip() or req.query.get("name") or "world"
    return f"{GREETING}, {who}!\n"
