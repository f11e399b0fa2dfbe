"""A real SMTP server for the tests (aiosmtpd), storing each message.

usage: smtp_sink.py PORT OUTDIR [CERT KEY [implicit]]

OUTDIR "-" only counts messages (for benchmarks); the count is printed on
stdout at exit.

Every accepted message becomes OUTDIR/<n>.msg: one JSON line (envelope
sender, recipients, whether the session was encrypted), then the message as
received. With SMTP_SINK_PASSWORD set, mail is refused unless the client
logs in as "keywarden" with that password. SMTP_SINK_REJECT="a@x=550 text;b@x=451 text"
answers RCPT TO for those addresses with those replies. With CERT and KEY the server offers STARTTLS and refuses mail
without it; with "implicit" after them it speaks TLS from the first byte. Prints "ready" once listening.
"""
import json
import os
import ssl
import sys
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Store:
    def __init__(self, outdir, implicit=False):
        self.outdir = outdir
        self.implicit = implicit
        self.lock = threading.Lock()
        self.count = 0
        self.rejects = {}
        for item in os.environ.get("SMTP_SINK_REJECT", "").split(";"):
            if "=" in item:
                address, reply = item.split("=", 1)
                self.rejects[address.strip().lower()] = reply.strip()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rejects.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            n = self.count
        if self.outdir == "-":
            return "250 Message accepted for delivery"
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            # An implicit-TLS listener accepts nothing but TLS connections.
            "tls": session.ssl is not None or self.implicit,
            "helo": session.host_name,
        }
        base = os.path.join(self.outdir, "%06d" % n)
        with open(base + ".tmp", "wb") as f:
            f.write(json.dumps(meta).encode() + b"\n")
            f.write(envelope.original_content or envelope.content)
        os.rename(base + ".tmp", base + ".msg")
        return "250 Message accepted for delivery"


def authenticator_for(password):
    """Accepts user "keywarden" with PASSWORD; anything else is refused."""

    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == b"keywarden"
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return check


def main():
    port = int(sys.argv[1])
    outdir = sys.argv[2]
    kwargs = {}
    if len(sys.argv) >= 5:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        if len(sys.argv) >= 6 and sys.argv[5] == "implicit":
            kwargs = {"ssl_context": ctx}
        else:
            kwargs = {"tls_context": ctx, "require_starttls": True}
    password = os.environ.get("SMTP_SINK_PASSWORD")
    if password:
        kwargs.update(authenticator=authenticator_for(password), auth_required=True)
    store = Store(outdir, implicit=len(sys.argv) >= 6 and sys.argv[5] == "implicit")
    controller = Controller(store, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()  # runs until stdin closes
    finally:
        controller.stop()
        print(store.count, flush=True)


if __name__ == "__main__":
    main()
