"""A stand-in webhook receiver for the compose stack: prints every Alertmanager notification as one JSON line.

Replace it with your incident tool. Run: python webhook_logger.py [port] (default 8080).
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            payload = json.loads(body)
            for alert in payload.get("alerts", []):
                print(
                    json.dumps(
                        {
                            "path": self.path,
                            "status": alert.get("status"),
                            "labels": alert.get("labels"),
                            "startsAt": alert.get("startsAt"),
                        }
                    ),
                    flush=True,
                )
        except ValueError:
            print(
                json.dumps({"path": self.path, "invalid_body": body[:200].decode("utf-8", "replace")}),
                flush=True,
            )
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


if __name__ == "__main__":
    HTTPServer(("0.0.0.0", int(sys.argv[1]) if len(sys.argv) > 1 else 8080), Handler).serve_forever()
