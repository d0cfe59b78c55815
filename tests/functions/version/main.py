VERSION = "v1"

def handle(req):
    return VERSION
