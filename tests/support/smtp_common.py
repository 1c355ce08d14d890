"""What the two test SMTP servers (smtp_server.py, smtp_sink.py) share: their command line,
the folder they report into, and running until the test kills them."""
import argparse
import itertools
import json
import os
import signal
import sys
import threading


def arguments():
    """A parser with the options both servers take: --port and --dir."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    return parser


class Folder:
    """The folder the test reads: every message as NNNNNN.json (written whole, then renamed, so
    the test never reads half of one), and logs appended to line by line."""

    def __init__(self, path):
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    def append(self, name, line):
        with self.lock:
            with open(os.path.join(self.path, name), "a") as f:
                f.write(line + "\n")

    def store(self, record):
        with self.lock:
            n = next(self.counter)
        tmp = os.path.join(self.path, f".{n:06}.json")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.path, f"{n:06}.json"))


def serve_until_terminated(stop):
    """Prints "ready" (what the test waits for), runs until SIGTERM, then calls `stop`."""
    print("ready", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    stop()
    sys.exit(0)
