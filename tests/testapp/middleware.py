"""Middleware of the GRIP-mode test processes only (tests/grip_settings.py)."""

import time

#: A request header that makes the answer leave this many seconds (at most 2) after the view returned.
DELAY_HEADER = "X-Test-Answer-Delay"


def slow_answers(get_response):
    """Hold the answer back, as a busy network between Django and the proxy would."""

    def middleware(request):
        response = get_response(request)
        delay = request.headers.get(DELAY_HEADER)
        if delay:
            time.sleep(min(float(delay), 2.0))
        return response

    return middleware
