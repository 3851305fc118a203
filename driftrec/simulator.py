"""Built-in shop simulator: shoppers whose category tastes drift emit realistic click events."""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
import random
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from driftrec.errors import DriftrecError

__all__ = ["ShopSimulator", "SimulatorConfigError", "wall_clock", "DEFAULT_SHOPPERS"]

logger = logging.getLogger(__name__)

_MASK = (1 << 64) - 1
_DAY = 86400.0

#: Shoppers in a session at once in a live stream, unless asked otherwise: any 2,000 consecutive
#: clicks then come from ~1,800 distinct shoppers, as in a shop whose tens of thousands of
#: visitors each click every few seconds (the rate only sets how long each one waits).
DEFAULT_SHOPPERS = 10_000


class SimulatorConfigError(DriftrecError, ValueError):
    """The simulator was given parameters it cannot honour."""

    http_status = 400


def _mix(*parts: int) -> int:
    """SplitMix64 over the parts: a hash that, unlike ``hash()``, never changes between Pythons."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = ((x ^ (p & _MASK)) * 0xBF58476D1CE4E5B9) & _MASK
        x ^= x >> 31
        x = (x * 0x94D049BB133111EB) & _MASK
        x ^= x >> 29
    return x


def _cumulative(weights: np.ndarray) -> list[float]:
    """Normalised cumulative weights as a list, for ``bisect`` sampling (C speed, no numpy call)."""
    cum = np.cumsum(weights, dtype=np.float64)
    return (cum / cum[-1]).tolist()


class ShopSimulator:
    """A deterministic shop whose shoppers browse, cart and buy, with drifting tastes.

    Items belong to ``n_categories`` categories, each split into sub-clusters; popularity is
    Zipf-like (long-tailed) inside every category. Each user has a favourite category, a few
    secondary ones and some uniform exploration. A session picks one category from the
    user's taste at its start time and mostly views items of one sub-cluster of it, so
    co-viewed items carry item-item signal. Each view leads to ``add_to_cart`` with
    probability ``p_cart`` and each cart to a ``purchase`` at checkout with ``p_purchase``
    (defaults give the ~100:10:3 funnel of real shops).

    Parameters
    ----------
    n_users, n_items, n_categories : int
        Size of the shop. ``n_categories >= 2`` (a drift needs somewhere to go).
    seed : int
        Everything — catalogue, tastes, drift schedule, the event stream and its ids — is a
        function of the seed and the parameters.
    drift_every_s : float or None
        Event time between one user's favourite-category shifts. Every user has a random
        phase, so shifts are staggered; ``None`` disables periodic drift.
    drift_at : float or None
        A known global drift point (event time): a ``drift_fraction`` of users switch
        favourite at exactly this time. Combine with ``drift_every_s=None`` for a single,
        clean drift that evaluations can be scored against.
    drift_fraction : float
        Share of users who take part in the global drift at ``drift_at``.
    transition_s : float
        0 gives sudden shifts; otherwise, after a shift the new favourite's share grows
        linearly from 0 to ``p_favourite`` over this many seconds while the old one's fades.
    start_time : float
        Event time (Unix seconds) of the start of the stream.
    sessions_per_user_per_day : float
        Mean session rate per user; sets how fast event time runs per event.
    mean_views_per_session, mean_gap_s : float
        Session length (geometric) and mean seconds between a session's events (exponential).
    p_favourite, p_secondary : float
        Share of sessions in the favourite category and in the ``n_secondary`` secondary
        categories; the rest explore uniformly over all categories.
    clusters_per_category, p_same_cluster, p_same_category : int, float, float
        Sub-clusters per category; a view after a session's first stays in the session's
        sub-cluster with ``p_same_cluster``, goes elsewhere in its category with
        ``p_same_category``, and otherwise wanders to a category drawn from the user's taste.
    p_cart, p_purchase : float
        Funnel: P(cart | view) and P(purchase | cart).
    popularity_exponent : float
        Zipf exponent of item popularity within a category.
    id_prefix : str or None
        Prefix of event and session ids; default ``"sim:<seed>"``. Event ids are
        ``"<prefix>:<n>"``: re-running a seed replays the same ids (idempotent publishing).
    """

    def __init__(
        self,
        n_users: int = 1000,
        n_items: int = 5000,
        n_categories: int = 20,
        seed: int = 0,
        *,
        drift_every_s: float | None = 7 * _DAY,
        drift_at: float | None = None,
        drift_fraction: float = 1.0,
        transition_s: float = 0.0,
        start_time: float = 1_700_000_000.0,
        sessions_per_user_per_day: float = 3.0,
        mean_views_per_session: float = 6.0,
        mean_gap_s: float = 30.0,
        p_favourite: float = 0.7,
        n_secondary: int = 2,
        p_secondary: float = 0.2,
        clusters_per_category: int = 4,
        p_same_cluster: float = 0.7,
        p_same_category: float = 0.2,
        p_cart: float = 0.1,
        p_purchase: float = 0.3,
        popularity_exponent: float = 1.1,
        id_prefix: str | None = None,
    ) -> None:
        self._check(seed >= 0, "seed must be >= 0")
        self._check(n_users >= 1 and n_items >= 1, "n_users and n_items must be >= 1")
        self._check(2 <= n_categories <= n_items, "need 2 <= n_categories <= n_items")
        self._check(0 <= n_secondary < n_categories, "need 0 <= n_secondary < n_categories")
        for name, p in [("drift_fraction", drift_fraction), ("p_favourite", p_favourite),
                        ("p_secondary", p_secondary), ("p_same_cluster", p_same_cluster),
                        ("p_same_category", p_same_category), ("p_cart", p_cart),
                        ("p_purchase", p_purchase)]:
            self._check(0.0 <= p <= 1.0, f"{name} must lie in [0, 1]")
        self._check(p_favourite + p_secondary <= 1.0, "p_favourite + p_secondary must be <= 1")
        self._check(p_same_cluster + p_same_category <= 1.0,
                    "p_same_cluster + p_same_category must be <= 1")
        self._check(drift_every_s is None or drift_every_s > 0, "drift_every_s must be > 0")
        self._check(transition_s >= 0, "transition_s must be >= 0")
        self._check(drift_at is None or drift_at >= start_time, "drift_at must be >= start_time")
        self._check(sessions_per_user_per_day > 0 and mean_gap_s > 0, "rates must be > 0")
        self._check(mean_views_per_session >= 1, "mean_views_per_session must be >= 1")
        self._check(clusters_per_category >= 1, "clusters_per_category must be >= 1")

        self.n_users, self.n_items, self.n_categories = n_users, n_items, n_categories
        self.seed = seed
        self.drift_every_s = drift_every_s
        self.drift_at: float | None = drift_at
        self.transition_s = transition_s
        self.start_time = float(start_time)
        self.p_favourite, self.p_secondary, self.n_secondary = p_favourite, p_secondary, n_secondary
        self.p_same_cluster, self.p_same_category = p_same_cluster, p_same_category
        self.p_cart, self.p_purchase = p_cart, p_purchase
        self.mean_views_per_session, self.mean_gap_s = mean_views_per_session, mean_gap_s
        self.id_prefix = id_prefix if id_prefix is not None else f"sim:{seed}"
        self._session_rate = n_users * sessions_per_user_per_day / _DAY

        width = len(str(n_categories - 1))
        self.categories: tuple[str, ...] = tuple(f"cat{c:0{width}d}" for c in range(n_categories))
        self.item_ids: tuple[str, ...] = tuple(f"i{i}" for i in range(n_items))
        self.user_ids: tuple[str, ...] = tuple(f"u{u}" for u in range(n_users))
        self._cat_index = {name: c for c, name in enumerate(self.categories)}
        self._build_catalogue(np.random.default_rng([seed, 1]), clusters_per_category,
                              popularity_exponent)
        self._build_users(np.random.default_rng([seed, 2]), drift_fraction)
        self._iter = self._stream()

    @staticmethod
    def _check(ok: bool, message: str) -> None:
        if not ok:
            raise SimulatorConfigError(message)

    @classmethod
    def live(cls, *, rate: float, shoppers: int = DEFAULT_SHOPPERS, n_users: int = 50_000,
             start: float | None = None, **kwargs: Any) -> ShopSimulator:
        """A shop whose stream, published at ``rate`` clicks per second, looks like live traffic.

        The session rate is set so that the stream's event time runs at the wall clock's pace
        at ``rate``, and the gap between one shopper's clicks so that about ``shoppers`` sessions
        are open at once: each click of the stream comes from one of ~``shoppers`` interleaved
        shoppers, as on a real site, instead of the offline stream's few long sessions per
        window. Event time starts now. Publish the stream through :func:`wall_clock`, which
        stamps each click with the time it is sent.

        Parameters
        ----------
        rate : float
            Clicks per second the stream will be published at (> 0).
        shoppers : int
            Sessions open at once (1 <= shoppers <= n_users).
        n_users : int
            Registered shoppers to draw sessions from; more than ``shoppers``, so that a shopper
            whose session is open is not picked for another.
        start : float or None
            Event time of the stream's start; None: now. A fixed start makes the stream the same
            run after run (a measurement that compares runs on one stream, streams/ tests).
        **kwargs
            Any other :class:`ShopSimulator` parameter but ``start_time``,
            ``sessions_per_user_per_day`` and ``mean_gap_s``, which this sets.
        """
        cls._check(rate > 0, "rate must be > 0")
        cls._check(1 <= shoppers <= n_users, f"need 1 <= shoppers <= users (got {shoppers} shoppers, "
                   f"{n_users} users)")
        clash = {"start_time", "sessions_per_user_per_day", "mean_gap_s"} & set(kwargs)
        cls._check(not clash, f"live() sets {sorted(clash)} itself")
        views = float(kwargs.get("mean_views_per_session", 6.0))
        p_cart, p_purchase = float(kwargs.get("p_cart", 0.1)), float(kwargs.get("p_purchase", 0.3))
        per_session = views * (1.0 + p_cart * (1.0 + p_purchase))  # clicks of one session
        # A session lasts ~views gaps, plus 0.2 of a gap after each cart and each purchase.
        gaps_per_session = views * (1.0 + 0.2 * p_cart * (1.0 + p_purchase))
        session_rate = rate / per_session  # sessions started per second
        # Open sessions = session rate x session length (Little's law).
        mean_gap_s = shoppers / (session_rate * gaps_per_session)
        return cls(n_users=n_users, start_time=time.time() if start is None else start, mean_gap_s=mean_gap_s,
                   sessions_per_user_per_day=session_rate * _DAY / n_users, **kwargs)

    # --- set-up -----------------------------------------------------------------------------
    def _build_catalogue(self, rng: np.random.Generator, k: int, exponent: float) -> None:
        n, c = self.n_items, self.n_categories
        item_cat = np.empty(n, dtype=np.int64)
        item_cat[rng.permutation(n)] = np.arange(n) % c  # sizes differ by at most one
        self._item_cat: list[int] = item_cat.tolist()
        self._cat_items: list[list[int]] = []
        self._cat_cum: list[list[float]] = []
        self._cl_items: list[list[list[int]]] = []
        self._cl_cum: list[list[list[float]]] = []
        self._cat_cl_cum: list[list[float]] = []
        for cat in range(c):
            items = rng.permutation(np.flatnonzero(item_cat == cat))  # random popularity rank
            weights = 1.0 / np.arange(1, len(items) + 1, dtype=np.float64) ** exponent
            clusters = np.arange(len(items)) % min(k, len(items))
            rng.shuffle(clusters)  # so every cluster holds heads and tails alike
            self._cat_items.append(items.tolist())
            self._cat_cum.append(_cumulative(weights))
            cl_items, cl_cum, cl_w = [], [], []
            for cl in range(int(clusters.max()) + 1):
                mask = clusters == cl
                cl_items.append(items[mask].tolist())
                cl_cum.append(_cumulative(weights[mask]))
                cl_w.append(weights[mask].sum())
            self._cl_items.append(cl_items)
            self._cl_cum.append(cl_cum)
            self._cat_cl_cum.append(_cumulative(np.asarray(cl_w)))

    def _build_users(self, rng: np.random.Generator, drift_fraction: float) -> None:
        u, c = self.n_users, self.n_categories
        fav0 = rng.integers(c, size=u)
        keys = rng.random((u, c))
        keys[np.arange(u), fav0] = 2.0  # the favourite is never its own secondary
        self._secondary: list[list[int]] = np.argsort(keys, axis=1)[:, : self.n_secondary].tolist()
        self._fav_chain: list[list[int]] = [[f] for f in fav0.tolist()]
        period = self.drift_every_s or 1.0
        self._phase: list[float] = (rng.random(u) * period + 1e-3).tolist()
        self._drifts: list[bool] = (rng.random(u) < drift_fraction).tolist()
        self._activity_cum = _cumulative(rng.lognormal(0.0, 1.0, size=u))  # heavy-tailed users

    # --- ground truth -----------------------------------------------------------------------
    def _uidx(self, user: str | int) -> int:
        text = str(user).removeprefix("u")
        idx = user if isinstance(user, int) else int(text) if text.isdigit() else -1
        if not 0 <= idx < self.n_users:
            raise SimulatorConfigError(f"unknown user {user!r}")
        return idx

    def _shifts(self, u: int, t: float) -> tuple[int, float]:
        """Number of favourite shifts user ``u`` has had by time ``t``, and when the last was."""
        n, last = 0, -math.inf
        if self.drift_every_s is not None:
            first = self.start_time + self._phase[u]
            if t >= first:
                k = int((t - first) // self.drift_every_s)
                n, last = k + 1, first + k * self.drift_every_s
        if self.drift_at is not None and self._drifts[u] and t >= self.drift_at:
            n, last = n + 1, max(last, self.drift_at)
        return n, last

    def _favourite(self, u: int, n: int) -> int:
        chain = self._fav_chain[u]
        while len(chain) <= n:  # each shift moves to a different category, chosen by hash
            step = 1 + _mix(self.seed, u, len(chain)) % (self.n_categories - 1)
            chain.append((chain[-1] + step) % self.n_categories)
        return chain[n]

    def user_favourite(self, user: str | int, t: float) -> str:
        """The category user ``user`` is (moving) towards at event time ``t`` — ground truth."""
        u = self._uidx(user)
        return self.categories[self._favourite(u, self._shifts(u, t)[0])]

    def user_taste(self, user: str | int, t: float) -> dict[str, float]:
        """P(a session of ``user`` starting at ``t`` is in each category) — ground truth."""
        u = self._uidx(user)
        n, last = self._shifts(u, t)
        c = self.n_categories
        explore = (1.0 - self.p_favourite - self.p_secondary) / c
        probs = [explore] * c
        alpha = self._alpha(n, t, last)
        probs[self._favourite(u, n)] += self.p_favourite * alpha
        if alpha < 1.0:
            probs[self._favourite(u, n - 1)] += self.p_favourite * (1.0 - alpha)
        for s in self._secondary[u]:
            probs[s] += self.p_secondary / self.n_secondary
        return dict(zip(self.categories, probs, strict=True))

    def _alpha(self, n: int, t: float, last: float) -> float:
        if n == 0 or self.transition_s == 0.0 or t - last >= self.transition_s:
            return 1.0
        return (t - last) / self.transition_s

    def item_category(self, item_id: str) -> str:
        """Category of a simulated item id such as ``"i17"``."""
        return self.categories[self._item_cat[int(item_id.removeprefix("i"))]]

    def items_in_category(self, category: str) -> list[str]:
        """Item ids of one category, most popular first."""
        return [self.item_ids[i] for i in self._cat_items[self._cat_index[category]]]

    @property
    def expected_event_rate(self) -> float:
        """Mean events per second of event time (helps place ``drift_at`` at an event count)."""
        per_session = self.mean_views_per_session * (1.0 + self.p_cart * (1.0 + self.p_purchase))
        return self._session_rate * per_session

    # --- the stream -------------------------------------------------------------------------
    def events(self, n: int) -> Iterator[dict[str, Any]]:
        """The next ``n`` events of this simulator's stream (the stream continues across calls)."""
        return itertools.islice(self._iter, n)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._iter

    def _pick(self, r: random.Random, cum: list[float], items: list[int]) -> int:
        return items[min(bisect.bisect_left(cum, r.random()), len(items) - 1)]

    def _session_category(self, r: random.Random, u: int, t: float) -> int:
        n, last = self._shifts(u, t)
        x = r.random()
        p_new = self.p_favourite * self._alpha(n, t, last)
        if x < p_new:
            return self._favourite(u, n)
        x -= p_new
        if x < self.p_favourite - p_new:
            return self._favourite(u, n - 1)
        x -= self.p_favourite - p_new
        if x < self.p_secondary:
            return self._secondary[u][int(x / self.p_secondary * self.n_secondary)]
        return int(r.random() * self.n_categories)

    def _stream(self) -> Iterator[dict[str, Any]]:
        r = random.Random(_mix(self.seed, 3))
        heap: list[tuple[float, int, dict[str, Any]]] = []
        push, pop, log = heapq.heappush, heapq.heappop, math.log
        busy_until = [-math.inf] * self.n_users
        rate, prefix = self._session_rate, self.id_prefix
        next_start = self.start_time - log(1.0 - r.random()) / rate
        seq = emitted = sessions = 0
        while True:
            while not heap or heap[0][0] > next_start:
                u = 0
                for _ in range(8):  # a shopper runs one session at a time, if we can help it
                    u = min(bisect.bisect_left(self._activity_cum, r.random()), self.n_users - 1)
                    if busy_until[u] <= next_start:
                        break
                evs = self._session(r, u, next_start, f"{prefix}:s{sessions}")
                sessions += 1
                busy_until[u] = evs[-1]["timestamp"]
                for ev in evs:
                    push(heap, (ev["timestamp"], seq, ev))
                    seq += 1
                next_start -= log(1.0 - r.random()) / rate
            ev = pop(heap)[2]
            ev["event_id"] = f"{prefix}:{emitted}"
            emitted += 1
            yield ev

    def _session(self, r: random.Random, u: int, t: float, sid: str) -> list[dict[str, Any]]:
        rnd, log, gap = r.random, math.log, self.mean_gap_s
        uid, items, cats = self.user_ids[u], self.item_ids, self.categories
        cat = self._session_category(r, u, t)
        cl = min(bisect.bisect_left(self._cat_cl_cum[cat], rnd()), len(self._cl_items[cat]) - 1)
        cl_cum, cl_items = self._cl_cum[cat][cl], self._cl_items[cat][cl]
        p = 1.0 / self.mean_views_per_session
        n_views = 1 + (int(log(1.0 - rnd()) / log(1.0 - p)) if p < 1.0 else 0)
        out: list[dict[str, Any]] = []
        carted: list[int] = []

        def emit(kind: str, item: int) -> None:
            out.append({"event_id": "", "user_id": uid, "item_id": items[item], "type": kind,
                        "timestamp": round(t, 3), "session_id": sid,
                        "category": cats[self._item_cat[item]]})

        item = -1
        for v in range(n_views):
            x = rnd()
            if v == 0 or x < self.p_same_cluster:
                cum, pool = cl_cum, cl_items
            elif x < self.p_same_cluster + self.p_same_category:
                cum, pool = self._cat_cum[cat], self._cat_items[cat]
            else:
                other = self._session_category(r, u, t)
                cum, pool = self._cat_cum[other], self._cat_items[other]
            prev, item = item, self._pick(r, cum, pool)
            if item == prev:  # a head item would else be re-viewed back to back too often
                item = self._pick(r, cum, pool)
            emit("view", item)
            if rnd() < self.p_cart:
                t -= 0.2 * gap * log(1.0 - rnd())
                emit("add_to_cart", item)
                carted.append(item)
            t -= gap * log(1.0 - rnd())
        for item in carted:  # checkout at the end of the session
            if rnd() < self.p_purchase:
                emit("purchase", item)
                t -= 0.2 * gap * log(1.0 - rnd())
        return out

    # --- scripted scenarios -----------------------------------------------------------------
    def scripted_user_drift(
        self,
        user_id: str,
        from_category: str | int,
        to_category: str | int,
        n_before: int,
        n_after: int,
        start: float,
        spacing_s: float = 60.0,
        event_type: str = "view",
    ) -> list[dict[str, Any]]:
        """Events of one user who views ``n_before`` items of one category, then ``n_after``
        of another, one every ``spacing_s`` seconds from ``start``.

        Items follow the catalogue's popularity; the events do not touch the main stream's
        random state, and their ids are deterministic (a replay is deduplicated).
        """
        cats = [c if isinstance(c, int) else self._cat_index.get(c, -1)
                for c in (from_category, to_category)]
        if not all(0 <= c < self.n_categories for c in cats):
            raise SimulatorConfigError(f"unknown category in {from_category!r}, {to_category!r}")
        if n_before < 0 or n_after < 0 or spacing_s < 0:
            raise SimulatorConfigError("n_before, n_after and spacing_s must be >= 0")
        key = f"{user_id}|{cats[0]}|{cats[1]}|{n_before}|{n_after}|{start!r}|{spacing_s!r}"
        tag = f"{zlib.crc32(key.encode()):08x}"
        r = random.Random(_mix(self.seed, 4, zlib.crc32(key.encode())))
        out: list[dict[str, Any]] = []
        for k in range(n_before + n_after):
            cat, phase = (cats[0], "before") if k < n_before else (cats[1], "after")
            item = self._pick(r, self._cat_cum[cat], self._cat_items[cat])
            out.append({"event_id": f"{self.id_prefix}:drift:{tag}:{k}", "user_id": user_id,
                        "item_id": self.item_ids[item], "type": event_type,
                        "timestamp": round(start + k * spacing_s, 3),
                        "session_id": f"{self.id_prefix}:drift:{tag}:{phase}",
                        "category": self.categories[cat]})
        return out


def wall_clock(events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The events with each one's ``timestamp`` set to the wall-clock time it is taken.

    A publisher that pulls one event just before sending it stamps every click with the time it
    was published, as a live site does, however long the stream runs: the worker's
    ``max_future_skew_s`` check never sees the simulator's own clicks as dated in the future.
    """
    now = time.time
    for ev in events:
        ev["timestamp"] = round(now(), 3)
        yield ev
