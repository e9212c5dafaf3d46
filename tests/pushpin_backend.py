"""A tiny WSGI backend for Pushpin (tests/test_pushpin_devtools.py), served by gunicorn.

``GET /stream?channel=NAME`` holds the request as a GRIP stream on ``NAME`` (``test`` by
default); ``GET /headers`` answers the request's headers as JSON (``{"Grip-Sig": ...}``).
"""

import json
from urllib.parse import parse_qs

STREAM_START = b": stream held\n\n"


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/stream":
        channel = parse_qs(environ.get("QUERY_STRING", "")).get("channel", ["test"])[0]
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Grip-Hold", "stream"),
                                  ("Grip-Channel", channel), ("Content-Length", str(len(STREAM_START)))])
        return [STREAM_START]
    if path == "/headers":
        headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items()
                   if key.startswith("HTTP_")}
        body = json.dumps(headers).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"Not found\n"]
