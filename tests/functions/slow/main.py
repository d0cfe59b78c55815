import time

def handle(req):
    time.sleep(float(req.query.get("s", "0.5")))
    return "slept"
