"""A small WSGI API guarded by keywarden (see keywarden_verify.py).

    KEYWARDEN_VERIFY_SOCKET=/run/keywarden/verify.sock PORT=8000 python3 demo.py

GET /api/products needs a key with read:products.
"""

import json
import os
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

from keywarden_verify import ApiKeyMiddleware


def products(environ, start_response):
    key = environ["keywarden.key"]
    body = json.dumps({"products": [], "owner_id": key["owner_id"], "key": key["prefix"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


def main():
    socket_path = os.environ.get("KEYWARDEN_VERIFY_SOCKET", "/run/keywarden/verify.sock")
    app = ApiKeyMiddleware(products, socket_path=socket_path, scopes=["read:products"])
    server = make_server("127.0.0.1", int(os.environ.get("PORT", "8000")), app, handler_class=QuietHandler)
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
