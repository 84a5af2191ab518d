"""The fair queue runs users round-robin, not in plain order of arrival."""

from __future__ import annotations

from bot.fair_queue import FairQueue


def submit(queue: FairQueue[str], job_id: int, user_id: int) -> None:
    queue.push(job_id, user_id, queue.assign_round(user_id), f"job {job_id}")


def drain(queue: FairQueue[str]) -> list[int]:
    order = []
    while (popped := queue.pop()) is not None:
        order.append(popped[0])
    return order


def test_a_flooding_user_takes_turns_with_later_arrivals() -> None:
    queue: FairQueue[str] = FairQueue()
    arrivals = [(1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2), (7, 3)]  # (job, user)
    for job_id, user_id in arrivals:
        submit(queue, job_id, user_id)
    order = drain(queue)
    arrival_order = [job_id for job_id, _ in arrivals]
    # Round 0: one job each (users 1, 2, 3); round 1: users 1 and 2; then user 1 alone.
    assert order == [1, 5, 7, 2, 6, 3, 4]
    assert order != arrival_order
    # Within each user, their own jobs keep their order of arrival.
    for user in (1, 2, 3):
        mine = [job for job, u in arrivals if u == user]
        assert [job for job in order if job in mine] == mine


def test_a_user_arriving_mid_run_joins_the_current_round() -> None:
    queue: FairQueue[str] = FairQueue()
    for job_id in (1, 2, 3):
        submit(queue, job_id, user_id=1)
    assert queue.pop() == (1, "job 1")  # round 0 is running
    submit(queue, 4, user_id=2)
    # User 2 had no turn in round 0 yet, so it goes before user 1's round-1 job.
    assert drain(queue) == [4, 2, 3]
