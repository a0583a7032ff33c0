"""The Kafka transport's replicated state (transports/kafka/state.py) fed command records by
hand, as the state topic would: the decisions depend on the records' order and broker time
stamps only, so two replicas fed the same records agree, and the first of two racing commands
wins."""

import base64

# the package's __init__ imports confluent_kafka (the [kafka] extra tests/run installs)
from guestkit_worker.transports.kafka.state import PoolState

JOB = "unit-job-1"
RAW = base64.b64encode(b'{"job_id": "unit-job-1"}').decode()


def records():
    """A pool's life: two workers, one job taken by both at once, a start, a renewal, a lapse,
    a takeover, a refused late outcome and the new owner's outcome; (command, time)."""
    hello = [({"op": "hello", "w": w, "life": w + "-1", "lease": 2, "rid": "h" + w}, 100.0) for w in "ab"]
    return hello + [
        ({"op": "submit", "job_id": JOB, "raw": RAW, "at": "t", "facts": {"digest": "d"}, "rid": "s"}, 100.1),
        ({"op": "take", "w": "a", "life": "a-1", "n": 1, "lease": 2, "rid": "ta"}, 100.2),
        ({"op": "take", "w": "b", "life": "b-1", "n": 1, "lease": 2, "rid": "tb"}, 100.2),
        ({"op": "start", "entry": 1, "generation": 3, "w": "a", "attempt": 1, "at": "t", "rid": "st"}, 100.3),
        ({"op": "renew", "entry": 1, "generation": 3, "rid": "r1"}, 101.5),
        ({"op": "beat", "w": "b", "life": "b-1", "rid": "bb"}, 103.4),
        ({"op": "reclaim", "w": "b", "life": "b-1", "limit": 5, "lease": 2, "max_deliveries": 5, "rid": "rc"},
         103.6),
        ({"op": "commit", "entry": 1, "generation": 3, "w": "a", "job_id": JOB, "status": "completed",
          "result": '{"worker_id": "a"}', "at": "t", "rid": "ca"}, 103.7),
        ({"op": "commit", "entry": 1, "generation": 4, "w": "b", "job_id": JOB, "status": "completed",
          "result": '{"worker_id": "b"}', "at": "t", "rid": "cb"}, 103.8),
    ]


def replay(rs):
    state = PoolState()
    return state, [state.apply(cmd, ts) for cmd, ts in rs]


def test_the_first_of_two_racing_takes_wins_and_a_lapsed_claim_moves_with_its_generation():
    state, answers = replay(records())
    take_a, take_b = answers[3], answers[4]
    assert [h["entry"] for h in take_a] == [1] and take_b == []
    assert answers[5] is True and answers[6] is True  # start and renewal by the owner
    taken = answers[8]["taken"]
    assert [(h["entry"], h["previous"], h["started"], h["deliveries"]) for h in taken] == [(1, "a", True, 2)]
    assert state.jobs[JOB].worker_id == "b"  # the status names the owner that took it over
    assert answers[9] == "lost" and answers[10] == "ok"  # the old owner fenced, the new one stores
    assert state.results[JOB] == '{"worker_id": "b"}' and state.jobs[JOB].status == "completed"


def test_a_claim_renewed_in_time_is_not_taken_over():
    rs = records()
    rs[7] = ({"op": "renew", "entry": 1, "generation": 3, "rid": "r2"}, 103.0)  # a renews again
    state, answers = replay(rs)
    assert answers[8] == {"taken": [], "dead": []}
    assert answers[9] == "ok" and state.results["unit-job-1"] == '{"worker_id": "a"}'


def test_replicas_fed_the_same_records_agree_and_a_command_sent_twice_counts_once():
    rs = records()
    one, _ = replay(rs)
    two, answers = replay(rs[:4] + [rs[3]] + rs[4:])  # the producer sent a's take twice
    assert answers[4] is None  # the second copy: dropped
    for s in (one, two):
        assert (list(s.results), s.jobs["unit-job-1"].status, s.claims, list(s.waiting)) == \
            (["unit-job-1"], "completed", {}, [])
