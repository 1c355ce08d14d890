#!/usr/bin/env python3
"""Tiny SMTP bridge for incident-gateway tests (stdlib + aiosmtpd only).

Listens for SMTP (no auth, no TLS) and hands every received message to a real
ticketing system, or stores it in a Maildir:

  --target redmine   POST the raw message to Redmine's /mail_handler
                     (same form as rdm-mailhandler.rb: key, email, issue[project], ...)
  --target rt        pipe the raw message into rt-mailgate (action chosen per
                     recipient: "*comment*@" -> comment, else correspond)
  --target maildir   deliver into a Maildir (used on 127.0.0.1:2526 to collect
                     Redmine/RT notifications for dovecot; see setup-mailbox.sh)

Examples:
  mail-bridge.py --target redmine                       # 127.0.0.1:2525 -> Redmine
  mail-bridge.py --target rt --listen 127.0.0.1:2527    # -> RT queue General
  mail-bridge.py --target maildir --listen 127.0.0.1:2526 --maildir /var/lib/soc-mail/Maildir

SMTP replies: 250 when the target accepted the mail, 451 when it was unreachable
(temporary), 554 when it rejected the mail.
"""
import argparse
import asyncio
import logging
import mailbox
import os
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request

from aiosmtpd.controller import Controller

log = logging.getLogger("mail-bridge")


def load_env(path):
    env = {}
    try:
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    k, v = line.split("=", 1)
                    env[k] = v.strip("'\"")
    except FileNotFoundError:
        pass
    return env


class Bridge:
    def __init__(self, args):
        self.args = args
        if args.target == "maildir":
            self.maildir = mailbox.Maildir(args.maildir, create=True)

    # --- targets -----------------------------------------------------------
    def to_redmine(self, raw, rcpts):
        a = self.args
        form = {
            "key": a.redmine_key,
            "email": raw,  # bytes; urlencode quotes them unchanged
            "issue[project]": a.redmine_project,
            "allow_override": a.redmine_allow_override,
            "unknown_user": a.redmine_unknown_user,
        }
        if a.redmine_tracker:
            form["issue[tracker]"] = a.redmine_tracker
        if a.redmine_no_permission_check:
            form["no_permission_check"] = "1"
        body = urllib.parse.urlencode(form).encode("ascii")
        req = urllib.request.Request(a.redmine_url.rstrip("/") + "/mail_handler", data=body,
                                     headers={"Content-Type": "application/x-www-form-urlencoded",
                                              "User-Agent": "Redmine mail handler/mail-bridge.py"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return "250 OK redmine %d" % resp.status
        except urllib.error.HTTPError as e:
            # 201 is success; 422 = mail rejected by MailHandler; 403 = bad key / WS disabled
            return "554 redmine rejected the mail (HTTP %d)" % e.code
        except (urllib.error.URLError, OSError) as e:
            return "451 redmine unreachable: %s" % e

    def to_rt(self, raw, rcpts):
        a = self.args
        action = a.rt_action
        if action == "auto":
            action = "comment" if any("comment" in r.split("@")[0].lower() for r in rcpts) else "correspond"
        cmd = [a.rt_mailgate, "--queue", a.rt_queue, "--action", action, "--url", a.rt_url]
        try:
            p = subprocess.run(cmd, input=raw, capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            return "451 rt-mailgate failed to run: %s" % e
        out = (p.stdout + p.stderr).decode("utf-8", "replace").strip().replace("\n", " | ")
        if p.returncode == 0:
            return "250 OK rt %s" % action
        if p.returncode == 75:  # EX_TEMPFAIL
            return "451 rt-mailgate tempfail: %s" % out[:200]
        return "554 rt-mailgate exit %d: %s" % (p.returncode, out[:200])

    def to_maildir(self, raw, rcpts):
        msg = mailbox.MaildirMessage(raw)
        self.maildir.add(msg)
        return "250 OK stored"

    # --- aiosmtpd handler --------------------------------------------------
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        fn = getattr(self, "to_" + self.args.target)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, fn, raw, list(envelope.rcpt_tos))
        log.info("from=%s to=%s bytes=%d -> %s", envelope.mail_from, ",".join(envelope.rcpt_tos), len(raw), result)
        return result


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    renv = load_env(os.path.join(here, "redmine.env"))
    tenv = load_env(os.path.join(here, "rt.env"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=["redmine", "rt", "maildir"], required=True)
    ap.add_argument("--listen", default="127.0.0.1:2525", help="host:port (default 127.0.0.1:2525)")
    ap.add_argument("--redmine-url", default=renv.get("REDMINE_URL", "http://127.0.0.1:3000"))
    ap.add_argument("--redmine-key", default=renv.get("REDMINE_MAIL_KEY", ""))
    ap.add_argument("--redmine-project", default=renv.get("REDMINE_PROJECT", "soc"))
    ap.add_argument("--redmine-tracker", default="Bug")
    ap.add_argument("--redmine-allow-override", default="all")
    ap.add_argument("--redmine-unknown-user", default="accept", choices=["ignore", "accept", "create"])
    ap.add_argument("--redmine-no-permission-check", action="store_true",
                    help="send no_permission_check=1 (needed if the sender is not a project member)")
    ap.add_argument("--rt-url", default=tenv.get("RT_URL", "http://127.0.0.1:8080") + "/")
    ap.add_argument("--rt-queue", default=tenv.get("RT_QUEUE", "General"))
    ap.add_argument("--rt-action", default="auto", choices=["auto", "correspond", "comment"])
    ap.add_argument("--rt-mailgate", default="rt-mailgate")
    ap.add_argument("--maildir", default="/var/lib/soc-mail/Maildir")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host, port = args.listen.rsplit(":", 1)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    ctl = Controller(Bridge(args), hostname=host, port=int(port),
                     data_size_limit=50 * 1024 * 1024, decode_data=False)
    ctl.start()
    log.info("listening on %s, target=%s", args.listen, args.target)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        ctl.stop()


if __name__ == "__main__":
    main()
