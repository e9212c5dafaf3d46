"""Issue 6 under load: 4 workers run 100 exports of 20 users while 500 SSE clients on 2 web processes watch.

The scenario is devtools/load.py's (the benchmark reports its figures from the same run); here
only correctness is checked: every client ends with the final state of each of its user's
downloads, no event is lost or received twice, and no client ever receives another user's row.
The other tests show that each of those checks fails when it should.
"""

import pytest

from devtools import load
from tests.processes import child_env


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_500_clients_watch_100_exports_on_4_workers():
    result = load.run(load.Scenario(), child_env(), "tests.asgi:application")

    assert load.problems(result) == []
    scenario = result["scenario"]
    assert (scenario["users"], scenario["clients_per_user"], scenario["exports_per_user"]) == (20, 25, 5)
    assert (scenario["web_processes"], scenario["workers"]) == (2, 4)
    assert len(result["clients"]) == 500
    assert {client["web"] for client in result["clients"]} == {0, 1}
    assert all(client["final"] for client in result["clients"])
    assert sum(len(records) for records in result["records"].values()) == 100


def watched(user, ids, rows, per_key=None):
    """What one client of ``result()`` took home."""
    return {"user": user, "web": 0, "messages": len(ids), "ids": ids, "rows": rows, "arrivals": [],
            "per_key": per_key or dict.fromkeys(rows, len(ids)), "dropped_rows": 0, "lost_connection": None,
            "final": True}


def result(*clients):
    """Two users with one finished download each, and their channels' events 1 to 3."""
    records = {
        "1": [{"key": "k1", "state": "complete", "url": "/d/k1/", "name": "A", "user_id": 1}],
        "2": [{"key": "k2", "state": "complete", "url": "/d/k2/", "name": "B", "user_id": 2}],
    }
    return {
        "scenario": {"users": 2, "clients_per_user": len(clients) // 2, "exports_per_user": 1},
        "pks": [1, 2],
        "downloads": [{"key": "k1", "pk": 1}, {"key": "k2", "pk": 2}],
        "records": records,
        "start_ids": {"1": 0, "2": 0},
        "last_ids": {"1": 3, "2": 3},
        "connect_failures": [],
        "clients": list(clients),
    }


DONE_1 = {"k1": {"state": "complete", "link": "/d/k1/", "percentage": None}}
DONE_2 = {"k2": {"state": "complete", "link": "/d/k2/", "percentage": None}}


def test_the_checks_pass_when_every_client_got_everything_once():
    assert load.problems(result(watched(0, [1, 2, 3], DONE_1), watched(1, [1, 2, 3], DONE_2))) == []


def test_an_event_a_client_never_received_is_lost():
    findings = load.findings(result(watched(0, [1, 3], DONE_1), watched(1, [1, 2, 3], DONE_2)))
    assert findings["lost_events"] == 1


def test_a_client_left_with_an_old_state_lost_the_final_one():
    running = {"k1": {"state": "running", "link": None, "percentage": 90}}
    findings = load.findings(result(watched(0, [1, 2, 3], running), watched(1, [1, 2, 3], DONE_2)))
    assert findings["lost_final_states"] == 1


def test_an_event_id_received_twice_is_a_duplicate():
    findings = load.findings(result(watched(0, [1, 2, 2, 3], DONE_1), watched(1, [1, 2, 3], DONE_2)))
    assert findings["duplicated_events"] == 1


def test_a_row_of_another_user_is_a_leak():
    client = watched(0, [1, 2, 3], DONE_1, per_key={"k1": 3, "k2": 1})
    findings = load.findings(result(client, watched(1, [1, 2, 3], DONE_2)))
    assert (findings["leaked_rows"], findings["leaked_messages"]) == (1, 1)
