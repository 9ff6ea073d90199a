"""A client for txengine's HTTP API.

    from txengine_client import Client, transfer
    client = Client("http://127.0.0.1:8080", "txk_...")
    tx = transfer("alice", "bob", 250)      # its id is made here
    client.submit(tx)                       # retried with that id on 503, 409, timeouts
    print(client.wait(tx.id).status)

The retry rules are the same as the Rust and TypeScript clients': see
README.md."""

from ._calls import NEVER, RetryPolicy, is_retried_status
from .client import AsyncClient, Client
from .errors import (
    Problem,
    RetriesExhausted,
    TransportError,
    TxEngineError,
    UnexpectedAnswer,
    WaitTimedOut,
)
from .models import (
    RETRIED_ITEM_STATUSES,
    Account,
    Balance,
    BalanceAt,
    CreatedKey,
    Entry,
    HistoryPage,
    ItemResult,
    Key,
    NewTransaction,
    Posting,
    Transaction,
    capture,
    credit,
    debit,
    hold,
    is_settled,
    new_id,
    postings,
    transfer,
    void,
)

__version__ = "0.1.0"

__all__ = [
    "NEVER",
    "RETRIED_ITEM_STATUSES",
    "Account",
    "AsyncClient",
    "Balance",
    "BalanceAt",
    "Client",
    "CreatedKey",
    "Entry",
    "HistoryPage",
    "ItemResult",
    "Key",
    "NewTransaction",
    "Posting",
    "Problem",
    "RetriesExhausted",
    "RetryPolicy",
    "Transaction",
    "TransportError",
    "TxEngineError",
    "UnexpectedAnswer",
    "WaitTimedOut",
    "capture",
    "credit",
    "debit",
    "hold",
    "is_retried_status",
    "is_settled",
    "new_id",
    "postings",
    "transfer",
    "void",
]
