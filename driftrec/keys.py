"""The Redis key layout: the contract between the worker (writer) and the reader.

See ``docs/redis-keys.md`` for types, bounds, writers and readers. Every key carries a Redis
Cluster hash tag: ``{u:<user>}`` for one user's keys, ``{i:<item>}`` for one item's keys and
``{g}`` for the small global keys, so multi-key operations on one user stay in one slot.
Ids are validated by :mod:`driftrec.events` (no braces, no spaces), so an id cannot reach
outside its own keys.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds key names under one prefix (tests use a unique prefix each)."""

    prefix: str = "dr"

    # --- one user -------------------------------------------------------------------------
    def user_state(self, user: str) -> str:
        """HASH item -> 16 bytes (last event time, forward-decayed weight): the bounded recent
        history (seen-filter, session) and the fold-in weights in one key (driftrec.userstate)."""
        return f"{self.prefix}:{{u:{user}}}:iw"

    def user_cats(self, user: str) -> str:
        """ZSET category -> forward-decayed weight (taste over categories)."""
        return f"{self.prefix}:{{u:{user}}}:cats"

    def user_vec(self, user: str) -> str:
        """STRING ``<model version or isgd> NUL <float32 bytes>``: the user's factor vector."""
        return f"{self.prefix}:{{u:{user}}}:vec"

    def user_clicks(self, user: str) -> str:
        """STRING: the time half of :meth:`user_state` in one value, oldest click first (times
        then item ids: :func:`driftrec.userstate.pack_clicks`); written with the session index,
        read by the session_knn source for the shoppers the index names."""
        return f"{self.prefix}:{{u:{user}}}:clk"

    def user_keys(self, user: str) -> tuple[str, ...]:
        """Every key of one user, all in the user's slot: what forgetting the user deletes."""
        return self.user_state(user), self.user_cats(user), self.user_vec(user), self.user_clicks(user)

    # --- one item -------------------------------------------------------------------------
    def item_nbrs(self, item: str) -> str:
        """ZSET neighbour -> forward-decayed co-occurrence (top-K pruned)."""
        return f"{self.prefix}:{{i:{item}}}:nbr"

    def item_sessions(self, item: str) -> str:
        """ZSET user -> event time of the user's latest click of the item (not decayed), the
        ``session_index_k`` latest: the session index the session_knn source reads."""
        return f"{self.prefix}:{{i:{item}}}:us"

    def is_item_sessions(self, key: str) -> bool:
        """Whether ``key`` is an :meth:`item_sessions` key (its scores are times: never rescaled)."""
        return key.startswith(f"{self.prefix}:{{i:") and key.endswith("}:us")

    def item_vec(self, item: str) -> str:
        """STRING ``<"isgd" or version> NUL <float32 bytes>``: online / cold-start item vector."""
        return f"{self.prefix}:{{i:{item}}}:vec"

    # --- global ---------------------------------------------------------------------------
    @property
    def popularity(self) -> str:
        """ZSET item -> forward-decayed weighted popularity (all items; also global trending)."""
        return f"{self.prefix}:{{g}}:pop"

    def trending(self, category: str) -> str:
        """ZSET item -> forward-decayed popularity within one category (top trending_k)."""
        return f"{self.prefix}:{{g}}:trend:{category}"

    @property
    def item_category(self) -> str:
        """HASH item -> category (last seen)."""
        return f"{self.prefix}:{{g}}:icat"

    @property
    def offsets(self) -> str:
        """HASH "<topic>:<partition>" -> last applied Kafka offset (effectively-once guard)."""
        return f"{self.prefix}:{{g}}:offsets"

    @property
    def meta(self) -> str:
        """HASH landmark (forward-decay origin, event time), last_event_time, applied_events."""
        return f"{self.prefix}:{{g}}:meta"

    # --- the item catalogue (docs/redis-keys.md, *Catalogue*) ------------------------------
    @property
    def catalogue(self) -> str:
        """HASH item -> its latest catalogue record (JSON; a delete is kept as a record)."""
        return f"{self.prefix}:{{g}}:items"

    @property
    def catalogue_feed(self) -> str:
        """STREAM of changed item ids (field ``i``) and the change's number (``v``): readers' poll."""
        return f"{self.prefix}:{{g}}:items:feed"

    @property
    def catalogue_offsets(self) -> str:
        """HASH "<items topic>:<partition>" -> last applied offset (the catalogue's guard)."""
        return f"{self.prefix}:{{g}}:items:offsets"

    # --- one served recommendation (attribution) --------------------------------------------
    def served(self, request_id: str) -> str:
        """HASH item -> source, plus ``#strategy``: what one answer showed (short TTL)."""
        return f"{self.prefix}:{{r:{request_id}}}"

    # --- published models -----------------------------------------------------------------
    @property
    def model_current(self) -> str:
        """STRING: the live model version id."""
        return f"{self.prefix}:{{m}}:current"

    def model_blob(self, version: str, part: str) -> str:
        """STRING/HASH parts of one published model version (factors, ids, weights)."""
        return f"{self.prefix}:{{m}}:v:{version}:{part}"

    def pattern(self) -> str:
        """Glob matching every key under this prefix (for cleanup and rescale scans)."""
        return f"{self.prefix}:*"
