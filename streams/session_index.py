"""The session index's writes for one micro-batch: item -> the users who clicked it last, and
each clicking user's click log.

``P:{i:<item>}:us`` (docs/redis-keys.md) is a ZSET user -> the event time of the user's latest
click of the item, cut to the ``session_index_k`` latest; the reader's session_knn source reads
it to find the shoppers whose sessions share items with the current one. The scores are event
times, not decayed scores: a landmark move leaves them alone (streams/rescale.py).

``P:{u:<user>}:clk`` is a STRING of the user's history as this batch leaves it, oldest click
first (:func:`driftrec.userstate.pack_clicks`): the source reads that for each neighbour and cuts
the session around the shared click from it, instead of decoding their whole item HASH. It is a
``SET`` of a value computed from what the batch was planned on, so a replay writes the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from driftrec.keys import Keys
from driftrec.models.online import BatchDelta
from driftrec.userstate import pack_clicks

__all__ = ["session_index_ops", "click_log_ops"]


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


def click_log_ops(keys: Keys, delta: BatchDelta, after: Mapping[str, tuple[Mapping[str, float], Any]],
                  ) -> list[tuple[str, str, int, list[Any]]]:
    """``(key, "t", 0, [value])``: the click log of every user who clicked in the batch.

    ``after`` is each batch user's merged ``(times, weights)``
    (:func:`driftrec.streams.redis_state.user_item_ops`): what their HASH holds once the batch is
    in. A forgotten user's key goes with their other keys (the caller's ``"d"``); one who
    clicked after the tombstone gets the log of those clicks.
    """
    key = keys.user_clicks
    return [(key(user), "t", 0, [pack_clicks(after[user][0])]) for user in sorted(delta.hist) if after[user][0]]
