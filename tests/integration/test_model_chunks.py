"""Model parts over one Redis value go in chunks: the publisher, the reader and the worker all
read the same bytes back; a damaged version is refused and deleting it leaves no chunk behind."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from driftrec import modelblobs
from driftrec.errors import ModelError
from driftrec.keys import Keys
from driftrec.online.app import create_store
from driftrec.online.model_cache import ModelCache
from driftrec.settings import Settings
from driftrec.streams.published import FactorCache
from driftrec.training.publish import MANIFEST, Publisher
from tests.unit.test_reader_model import parts as reader_model_parts

pytestmark = pytest.mark.integration

CHUNK = 4096


def model_parts(seed: int = 0) -> dict[str, bytes]:
    """A version whose item factors, user factors and TF layers are each over ``CHUNK`` bytes."""
    head, tf = reader_model_parts(seed=seed, n_items=300, n_users=200, k=8, hidden=(16,))
    parts = {name: value for name, value in {**head, **tf}.items() if value is not None}
    parts[MANIFEST] = json.dumps({"parts": sorted(parts)}).encode()
    return parts


def publisher(settings: Settings, client: redis.Redis) -> Publisher:
    return Publisher(client, Keys(settings.key_prefix), grace_s=0.0, default_reg=0.1,
                     pool_size=settings.reader_similar_users_pool, chunk_bytes=CHUNK)


def test_chunked_parts_load_in_the_reader_and_the_worker_as_written(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis)
    keys = Keys(settings.key_prefix)
    parts = model_parts()
    pub = publisher(settings, client)
    version = pub.publish(parts, expected_live=None)
    big = [p for p, v in parts.items() if len(v) > CHUNK]
    assert {"item_factors", "tf_layer0_weight", "user_factors"} <= set(big)
    for part in big:  # stored as a head and chunks, each within the limit
        head = client.get(keys.model_blob(version, part))
        assert isinstance(head, bytes)
        shape = modelblobs.head_of(part, head)
        assert shape is not None
        n, total = shape
        sizes = [client.strlen(modelblobs.chunk_key(keys.model_blob(version, part), i)) for i in range(n)]
        assert max(sizes) <= CHUNK and sum(sizes) == total == len(parts[part])
    assert pub.read_parts(version, list(parts)) == parts

    async def loaders() -> tuple[object, object]:
        aclient = aioredis.Redis.from_url(settings.redis)
        worker = FactorCache(aclient, keys, settings.fold_in_regularization)
        await worker.refresh(version)
        store = create_store(settings)
        reader = ModelCache(store.model_parts, default_reg=0.1, pool_size=settings.reader_similar_users_pool)
        served = await reader.load(version)
        assert await store.model_parts(version, list(parts)) == parts
        await aclient.aclose()
        await store.aclose()
        return worker.model, served

    worker_model, served = asyncio.run(loaders())
    Y = np.load(io.BytesIO(parts["item_factors"]))
    np.testing.assert_array_equal(served.Y, Y)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(worker_model.Y, Y)  # type: ignore[attr-defined]
    assert served.has_tf and len(served.pool_ids) == 200  # type: ignore[attr-defined]

    # A lost chunk: the version no longer loads (the reader keeps what it serves).
    client.delete(modelblobs.chunk_key(keys.model_blob(version, "item_factors"), 1))
    with pytest.raises(ModelError):
        pub.load(version)

    async def reader_load() -> None:
        store = create_store(settings)
        try:
            await ModelCache(store.model_parts, default_reg=0.1, pool_size=10).load(version)
        finally:
            await store.aclose()

    with pytest.raises(ModelError):
        asyncio.run(reader_load())

    # Deleting a version removes its chunks too.
    other = pub.publish(model_parts(seed=1), expected_live=version)
    pub.delete(version)
    left = list(client.scan_iter(match=keys.model_blob(version, "*")))
    assert left == [] and pub.live_version() == other
    client.close()
