def handle(req):
    if req.query.get("eat") == "1":
        chunks = []
        while True:
            chunks.append(bytearray(8 << 20))
    return "fine"
