"""Kafka stopped (SIGSTOP) while the client submits, one at a time and in a
batch: resumed within the
retry bound, every submission is applied exactly once; stalled past it, the
error names the id, and a later retry with that id applies it once."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid

import pytest

import txengine_client as tx

from conftest import engine_env


@pytest.fixture
def kafka_pid() -> int:
    return int(engine_env("TXENGINE_KAFKA_PID"))


def stalled(pid: int, seconds: float) -> threading.Thread:
    """Stops the broker now and resumes it after ``seconds``."""
    os.kill(pid, signal.SIGSTOP)
    resume = threading.Timer(seconds, os.kill, (pid, signal.SIGCONT))
    resume.start()
    return resume


def test_kafka_stalled_within_and_past_the_retry_bound(
    url: str, admin_token: str, api_key: str, kafka_pid: int
) -> None:
    with tx.Client(url, admin_token) as admin:
        payer = f"py-stall-{uuid.uuid4().hex[:6]}"
        admin.put_account(payer)
        admin.set_balance(payer, 1_000)
        patient = admin.with_token(api_key).with_retry(tx.RetryPolicy(max_elapsed_s=30))
        hasty = patient.with_retry(tx.RetryPolicy(max_elapsed_s=1))

        async def submit_all(
            txs: list[tx.NewTransaction], batch: list[tx.NewTransaction]
        ) -> tuple[list[tx.Transaction], list[tx.ItemResult]]:
            async with tx.AsyncClient(url, api_key, retry=tx.RetryPolicy(max_elapsed_s=30)) as client:
                one_by_one = asyncio.gather(*(client.submit(t) for t in txs))
                return await asyncio.gather(one_by_one, client.submit_batch(batch))

        debits = [tx.debit(payer, amount) for amount in range(1, 6)]
        batch = [tx.debit(payer, amount) for amount in range(6, 9)]
        resume = stalled(kafka_pid, 5)
        try:
            answers, results = asyncio.run(submit_all(debits, batch))
        finally:
            resume.join()
        assert [a.id for a in answers] == [d.id for d in debits]
        assert [(r.id, r.status in ("pending", "applied")) for r in results] == [(b.id, True) for b in batch], results
        for debit in [*debits, *batch]:
            assert patient.wait(debit.id, 30).status == "applied"

        late = tx.debit(payer, 100)
        resume = stalled(kafka_pid, 3)
        try:
            with pytest.raises(tx.RetriesExhausted) as raised:
                hasty.submit(late)
        finally:
            resume.join()
        assert raised.value.id == late.id
        patient.submit(late)
        assert patient.wait(late.id, 30).status == "applied"

        assert patient.balance(payer).balance == 1_000 - 15 - 21 - 100, "each applied once"
        ids = [entry.id for entry in patient.history(payer)]
        for sent in [*debits, *batch, late]:
            assert ids.count(sent.id) == 1, f"{sent.id} in the history {ids.count(sent.id)} times"
