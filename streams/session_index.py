"""The session index's writes for one micro-batch: item -> the users who clicked it last.

``P:{i:<item>}:us`` (docs/redis-keys.md) is a ZSET user -> the event time of the user's latest
click of the item, cut to the ``session_index_k`` latest; the reader's session_knn source reads
it to find the shoppers whose sessions share items with the current one. The scores are event
times, not decayed scores: a landmark move leaves them alone (streams/rescale.py).
"""

from __future__ import annotations

from typing import Any

from driftrec.keys import Keys
from driftrec.models.online import BatchDelta

__all__ = ["session_index_ops"]


def session_index_ops(keys: Keys, delta: BatchDelta, cap: int) -> list[tuple[str, str, int, list[Any]]]:
    """``(key, op, cap, flat args)`` of the batch's session-index writes; none when ``cap`` is 0.

    ``"r"`` ops first: the users a batch forgets leave the index of every item they clicked
    (``delta.index_gone``); then one ``"g"`` op per item the batch touched: ``ZADD GT`` of
    ``(time, user)`` pairs and the cut to ``cap``. :meth:`driftrec.models.online.InMemoryState.apply`
    is the reference.
    """
    if cap <= 0:
        return []
    out: list[tuple[str, str, int, list[Any]]] = []
    item_key = keys.item_sessions
    for item, users in delta.index_gone.items():
        out.append((item_key(item), "r", 0, sorted(users)))
    rows: dict[str, list[Any]] = {}
    for user, times in delta.hist.items():
        for item, t in times.items():
            row = rows.get(item)
            if row is None:
                rows[item] = [t, user]
            else:
                row += (t, user)
    out.extend((item_key(item), "g", cap, flat) for item, flat in rows.items())
    return out
