import os

def handle(req):
    if req.query.get("die") == "1":
        os._exit(3)
    if req.query.get("raise") == "1":
        raise ValueError("handler refused")
    return "alive"
