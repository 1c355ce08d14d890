"""A real SMTP server for the tests (aiosmtpd): stores every message it accepts as JSON
(envelope + raw data) in a folder, counts connections, and can be told to refuse mail.

    python3 smtp_server.py --port 2525 --dir /tmp/mails [--reject "550 5.7.1 no thanks"]

Prints "ready" once it listens; runs until killed.
"""
from aiosmtpd.controller import Controller

from smtp_common import Folder, arguments, serve_until_terminated


class Store:
    def __init__(self, folder, reject):
        self.folder = folder
        self.reject = reject

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # One EHLO per connection: count connections.
        self.folder.append("connections.log", hostname)
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):
        if self.reject:
            return self.reject
        self.folder.store(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "data": envelope.original_content.decode("utf-8", "replace"),
            }
        )
        return "250 2.0.0 Message accepted for delivery"


def main():
    parser = arguments()
    parser.add_argument("--reject", default=None)
    parser.add_argument("--tls-cert", default=None, help="PEM certificate: offer STARTTLS (required)")
    parser.add_argument("--tls-key", default=None)
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte (smtps)")
    args = parser.parse_args()
    handler = Store(Folder(args.dir), args.reject)
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
    serve_until_terminated(controller.stop)


if __name__ == "__main__":
    main()
