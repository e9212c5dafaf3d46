"""Threads released at the same moment, for the tests that race one process against itself."""

import threading

from django.db import connections


def together(*actions, timeout=60):
    """Run each of ``actions`` in a thread of its own, all released at once; return their results.

    A thread's database connections are closed when its action returns (PostgreSQL refuses
    to drop a test database that a session still uses). An action that raised has its
    exception raised here, after every thread has ended.
    """
    barrier = threading.Barrier(len(actions))
    results = [None] * len(actions)
    errors = []

    def act(number, action):
        try:
            barrier.wait(timeout)
            results[number] = action()
        except BaseException as error:  # raised below, in the test's thread
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=act, args=(number, action)) for number, action in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise errors[0]
    return results
