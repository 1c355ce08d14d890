"""A raw-socket SMTP sink for the tests, lenient the way some real MTAs are, and able to stall.

    python3 smtp_sink.py --port 2525 --dir /tmp/mails [--stall-data SECONDS] [--auth]

Unlike aiosmtpd (strict: only CRLF ends a line), this sink ends a line at CRLF, a bare LF or
a bare CR, so a lone "." between any of them ends DATA, and whatever follows is read as SMTP
commands. That is the reading an SMTP smuggling attack counts on: if the gateway ever lets
such a sequence through, a second message (or other commands) appears here.

Every message it reads is stored as NNNNNN.json (envelope, data, session); events go to
events.jsonl (connect, data, end, close: each with the session and a time), and each
session's raw bytes to session-N.raw.

--stall-data holds the reply to the end of DATA for that many seconds (the message is stored
first), watching for the client to hang up. --auth offers AUTH PLAIN/LOGIN and records what
the client sent (auth.log); any credentials are accepted.

Prints "ready" once it listens; runs until killed.
"""
import itertools
import json
import os
import select
import socket
import socketserver
import threading
import time

from smtp_common import Folder, arguments, serve_until_terminated

ARGS = None
FOLDER = None
SESSIONS = itertools.count(1)


def event(session, kind, **extra):
    FOLDER.append("events.jsonl", json.dumps({"session": session, "event": kind, "t": time.time(), **extra}))


def store(session, mail_from, rcpts, data):
    FOLDER.store(
        {
            "session": session,
            "mail_from": mail_from,
            "rcpt_tos": rcpts,
            # latin-1 keeps every byte as one character, so the test sees exactly what came.
            "data": data.decode("latin-1"),
        }
    )


def address(arg):
    start, end = arg.find("<"), arg.find(">")
    return arg[start + 1 : end] if start >= 0 and end > start else arg.strip()


class Handler(socketserver.BaseRequestHandler):
    def setup(self):
        self.session = next(SESSIONS)
        self.buf = b""
        self.raw = open(os.path.join(FOLDER.path, f"session-{self.session}.raw"), "wb")
        self.closed = False

    def send(self, line):
        self.request.sendall(line.encode() + b"\r\n")

    def fill(self):
        chunk = self.request.recv(65536)
        if not chunk:
            raise EOFError
        self.raw.write(chunk)
        self.raw.flush()
        self.buf += chunk

    def line(self):
        """The next line, ended by CRLF, LF or CR (lenient)."""
        while True:
            for i, b in enumerate(self.buf):
                if b == 0x0A:
                    out, self.buf = self.buf[:i], self.buf[i + 1 :]
                    return out
                if b == 0x0D:
                    if i + 1 == len(self.buf):
                        break  # a CR at the end: wait to see whether an LF follows
                    skip = 2 if self.buf[i + 1] == 0x0A else 1
                    out, self.buf = self.buf[:i], self.buf[i + skip :]
                    return out
            self.fill()

    def hold(self, seconds):
        """Waits, but notices a client that hangs up (then stops at once)."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            ready, _, _ = select.select([self.request], [], [], 0.05)
            if ready:
                try:
                    peek = self.request.recv(1, socket.MSG_PEEK)
                except OSError:
                    peek = b""
                if not peek:
                    raise EOFError
                time.sleep(0.05)

    def handle(self):
        event(self.session, "connect")
        try:
            self.dialogue()
        except (EOFError, ConnectionError, OSError):
            pass
        finally:
            event(self.session, "close")
            self.raw.close()

    def dialogue(self):
        self.send("220 sink ESMTP")
        mail_from, rcpts = None, []
        while True:
            line = self.line().decode("latin-1")
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                self.send("250-sink")
                if ARGS.auth:
                    self.send("250-AUTH PLAIN LOGIN")
                self.send("250 8BITMIME")
            elif verb == "AUTH":
                FOLDER.append("auth.log", line)
                self.send("235 2.7.0 Authentication successful")
            elif line.upper().startswith("MAIL FROM:"):
                mail_from, rcpts = address(line[10:]), []
                self.send("250 2.1.0 OK")
            elif line.upper().startswith("RCPT TO:"):
                rcpts.append(address(line[8:]))
                self.send("250 2.1.5 OK")
            elif verb == "DATA":
                self.send("354 End data with <CR><LF>.<CR><LF>")
                event(self.session, "data")
                data = []
                while True:
                    l = self.line()
                    if l == b".":
                        break
                    data.append(l[1:] if l.startswith(b".") else l)
                store(self.session, mail_from, rcpts, b"\r\n".join(data) + b"\r\n")
                event(self.session, "end")
                if ARGS.stall_data:
                    self.hold(ARGS.stall_data)
                self.send("250 2.0.0 Message accepted")
                mail_from, rcpts = None, []
            elif verb == "RSET":
                mail_from, rcpts = None, []
                self.send("250 2.0.0 OK")
            elif verb == "NOOP":
                self.send("250 2.0.0 OK")
            elif verb == "QUIT":
                self.send("221 2.0.0 Bye")
                return
            else:
                self.send("500 5.5.2 what?")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    global ARGS, FOLDER
    parser = arguments()
    parser.add_argument("--stall-data", type=float, default=0)
    parser.add_argument("--auth", action="store_true")
    ARGS = parser.parse_args()
    FOLDER = Folder(ARGS.dir)
    server = Server(("127.0.0.1", ARGS.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    serve_until_terminated(server.shutdown)


if __name__ == "__main__":
    main()
