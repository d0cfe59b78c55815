def handle(req):
    if req.query.get("spin") == "1":
        while True:
            pass
    return "ok"
