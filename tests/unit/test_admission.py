"""The pre-auth budget: who may hold a handshake slot, and who gives way."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.gossip.admission import (
    Admit,
    PendingBudget,
    PendingStatistics,
    Refusal,
    Refuse,
    admit_authenticated,
)


def admit(budget: PendingBudget, source: str, now: float = 0.0) -> Admit:
    decision = budget.offer(source, now)
    assert isinstance(decision, Admit)
    return decision


def test_a_fifth_from_one_address_takes_the_place_of_its_oldest() -> None:
    budget = PendingBudget(max_pending=32, max_per_source=4)
    tickets = [admit(budget, "10.0.0.9", t).ticket for t in range(4)]
    newest = admit(budget, "10.0.0.9", 4.0)
    assert newest.evict == tickets[0] and newest.why is Refusal.SOURCE_FULL
    assert tickets[0] not in budget and newest.ticket in budget
    assert budget.statistics().pending == 4


def test_one_address_never_takes_anothers_slot() -> None:
    budget = PendingBudget(max_pending=8, max_per_source=4)
    other = admit(budget, "10.0.0.1").ticket
    for _ in range(200):
        decision = admit(budget, "10.0.0.9")
        assert decision.evict != other
    assert other in budget
    assert budget.statistics() == PendingStatistics(pending=5, sources=2, awaiting_hello=5)


def test_a_full_budget_evicts_the_oldest_that_sent_no_hello() -> None:
    budget = PendingBudget(max_pending=3, max_per_source=1)
    a, b, c = (admit(budget, f"10.0.0.{i}", i).ticket for i in range(3))
    budget.hello_received(a)  # past its Hello: never evicted
    decision = admit(budget, "10.0.0.99", 5.0)
    assert decision.evict == b and decision.why is Refusal.BUDGET_FULL
    assert a in budget and c in budget


def test_when_every_slot_is_past_its_hello_the_newcomer_is_refused() -> None:
    budget = PendingBudget(max_pending=2, max_per_source=2)
    for ticket in (admit(budget, "10.0.0.1").ticket, admit(budget, "10.0.0.2").ticket):
        budget.hello_received(ticket)
    assert budget.offer("10.0.0.3", 1.0) == Refuse(Refusal.BUDGET_FULL)
    assert budget.offer("10.0.0.1", 1.0) == Refuse(Refusal.BUDGET_FULL)
    budget2 = PendingBudget(max_pending=8, max_per_source=1)
    budget2.hello_received(admit(budget2, "10.0.0.1").ticket)
    assert budget2.offer("10.0.0.1", 1.0) == Refuse(Refusal.SOURCE_FULL)


def test_release_gives_the_slot_back_and_is_idempotent() -> None:
    budget = PendingBudget(max_pending=1, max_per_source=1)
    ticket = admit(budget, "10.0.0.1").ticket
    budget.release(ticket)
    budget.release(ticket)
    budget.hello_received(ticket)  # ignored: gone
    assert len(budget) == 0 and budget.statistics().sources == 0
    assert admit(budget, "10.0.0.2").evict is None


def test_limits_must_make_sense() -> None:
    with pytest.raises(ValueError):
        PendingBudget(max_pending=4, max_per_source=5)
    with pytest.raises(ValueError):
        PendingBudget(max_pending=4, max_per_source=0)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["offer", "hello", "release"]),
            st.integers(0, 20),  # source, or index of a ticket
        ),
        max_size=300,
    )
)
def test_the_table_stays_within_both_caps_whatever_arrives(ops: list[tuple[str, int]]) -> None:
    budget = PendingBudget(max_pending=8, max_per_source=3)
    issued: list[int] = []
    for op, n in ops:
        if op == "offer":
            decision = budget.offer(f"10.0.0.{n}", 0.0)
            if isinstance(decision, Admit):
                issued.append(decision.ticket)
                assert decision.evict is None or decision.evict not in budget
        elif issued:
            ticket = issued[n % len(issued)]
            (budget.hello_received if op == "hello" else budget.release)(ticket)
        stats = budget.statistics()
        assert stats.pending == len(budget) <= 8
        per_source: dict[str, int] = {}
        for pending in budget._pending.values():
            per_source[pending.source] = per_source.get(pending.source, 0) + 1
        assert all(count <= 3 for count in per_source.values())
        assert per_source == budget._per_source


@pytest.mark.parametrize(
    ("outbound", "live", "replaces", "configured", "admitted"),
    [
        (False, 7, False, False, True),  # below the limit
        (False, 8, False, False, False),  # a stranger's peer at the limit
        (False, 8, True, False, True),  # replaces: the count does not grow
        (False, 8, False, True, True),  # a peer we were told to reach
        (True, 8, False, False, True),  # our own dial was planned within the limit
    ],
)
def test_authenticated_connections_and_the_conn_limit(
    outbound: bool, live: int, replaces: bool, configured: bool, admitted: bool
) -> None:
    assert (
        admit_authenticated(
            outbound=outbound,
            live=live,
            conn_limit=8,
            replaces=replaces,
            configured=configured,
        )
        is admitted
    )
