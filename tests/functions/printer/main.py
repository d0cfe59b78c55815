import sys

loaded = 0
loaded += 1

def handle(req):
    print("printing", req.text())
    print("to stderr", req.text(), file=sys.stderr)
    return {"loaded": loaded}
