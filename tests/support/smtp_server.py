"""A real SMTP server for the tests (aiosmtpd): stores every message it accepts as JSON
(envelope + raw data) in a folder, counts connections, and can be told to refuse mail.

    python3 smtp_server.py --port 2525 --dir /tmp/mails [--reject "550 5.7.1 no thanks"]

Prints "ready" once it listens; runs until killed.
"""
import argparse
import itertools
import json
import os
import signal
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class Store:
    def __init__(self, folder, reject):
        self.folder = folder
        self.reject = reject
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # One EHLO per connection: count connections.
        with self.lock:
            with open(os.path.join(self.folder, "connections.log"), "a") as f:
                f.write(hostname + "\n")
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):
        if self.reject:
            return self.reject
        with self.lock:
            n = next(self.counter)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.original_content.decode("utf-8", "replace"),
        }
        tmp = os.path.join(self.folder, f".{n:06}.json")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.folder, f"{n:06}.json"))
        return "250 2.0.0 Message accepted for delivery"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--reject", default=None)
    parser.add_argument("--tls-cert", default=None, help="PEM certificate: offer STARTTLS (required)")
    parser.add_argument("--tls-key", default=None)
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte (smtps)")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    handler = Store(args.dir, args.reject)
    server_kwargs = {"data_size_limit": 50 * 1024 * 1024}
    ssl_context = None
    if args.tls_cert:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.implicit_tls:
            ssl_context = context
        else:
            server_kwargs.update(tls_context=context, require_starttls=True)
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=args.port,
        ssl_context=ssl_context,
        server_kwargs=server_kwargs,
    )
    controller.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    controller.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
