"""Built model versions shared by the reader processes of one host, through memory-mapped files.

Under ``driftrec serve --workers N`` every process serves the same published version. Built
separately, each would hold its own copy of every array and HNSW graph (at a million items and
``driftrec train``'s defaults, gigabytes each) and spend its own minutes building the graphs.
Instead the first process to load a version builds it (:func:`~driftrec.online.model_cache.build_model`)
and writes the result to a folder: the arrays as ``.npy`` files, the graphs as usearch index
files. Every process, the builder included, then maps those files read-only
(``np.load(mmap_mode="r")``, ``Index.restore(view=True)``): the kernel keeps one copy in its
page cache, whatever N is. A lock file per version makes the others wait for the builder
instead of building too. Only the id lists and their dictionaries are per process.

The folder is a cache of what Redis holds (``P:{m}:v:<version>``): losing it costs a rebuild.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from driftrec.online.ann import AnnConfig, AnnIndex
from driftrec.online.model_cache import PublishedModel

__all__ = ["SharedModels"]

logger = logging.getLogger(__name__)

_FORMAT = 1
#: Index attributes of :class:`PublishedModel` and the file each is saved in.
_INDEXES = {"ann_vec": "vec.usearch", "ann_tf": "tf.usearch", "ann_users": "users.usearch",
            "ann_items": "items.usearch"}


def _safe(version: str) -> str:
    """A file name for ``version`` (versions are ids the trainer chose; keep them readable)."""
    digest = hashlib.blake2b(version.encode(), digest_size=6).hexdigest()  # the same in every process
    return re.sub(r"[^A-Za-z0-9._-]", "_", version)[:100] + "-" + digest


class SharedModels:
    """Model versions built once per host and memory-mapped by every reader process.

    Parameters
    ----------
    root : Path
        The folder (one per set of cooperating processes: same Redis, same key prefix, same
        settings); created when missing. ``/dev/shm`` keeps it in memory.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self, name: str, *, wait: bool = True) -> Iterator[bool]:
        with open(self.root / f"{name}.lock", "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def opened(self, version: str) -> PublishedModel | None:
        """``version`` mapped from the folder if a process has built it (cheap), else None."""
        folder = self.root / _safe(version)
        if not (folder / "manifest.json").exists():
            return None
        try:
            return open_model(folder, version)
        except (OSError, ValueError) as exc:  # deleted meanwhile, or unreadable: load it again
            logger.info("shared model %s not opened (%s); loading it", version, exc)
            return None

    def load(self, version: str, build: Callable[[], PublishedModel]) -> PublishedModel:
        """``version`` mapped from the folder, built by ``build()`` and saved first if no process
        has yet (blocking: run off the event loop)."""
        name = _safe(version)
        folder = self.root / name
        with self._locked(name):
            if not (folder / "manifest.json").exists():
                model = build()
                shutil.rmtree(folder, ignore_errors=True)  # a builder that died half-way
                tmp = self.root / f".{name}.tmp-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                save_model(model, tmp)
                tmp.rename(folder)
                logger.info("model %s built and shared in %s", version, folder)
                self._forget_others(keep=name)
            return open_model(folder, version)

    def _forget_others(self, keep: str) -> None:
        """Delete the folders of other versions nobody is building now: a process still serving
        one keeps its mappings (the files go when the last mapping does)."""
        for path in self.root.iterdir():
            if not path.is_dir() or path.name == keep or path.name.startswith("."):
                continue
            with self._locked(path.name, wait=False) as got:
                if got:
                    shutil.rmtree(path, ignore_errors=True)


def save_model(m: PublishedModel, folder: Path) -> None:
    """Write ``m`` (built, indexes included) to ``folder`` in the form :func:`open_model` maps."""
    folder.mkdir(parents=True)
    arrays: dict[str, Any] = {"Y": m.Y, "YtY": m.YtY, "scan_Y": m.scan_Y, "norms": m._item_norms()}
    for name in ("tf_out_bias", "pool_unit", "user_factors", "scan_rows", "scan_tf_out", "scan_tf_bias"):
        value = getattr(m, name)
        if value is not None:
            arrays[name] = value
    for i, (W, b) in enumerate(m.tf_hidden):
        arrays[f"tf_hidden{i}_W"], arrays[f"tf_hidden{i}_b"] = W, b
    for name, value in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(value), allow_pickle=False)
    (folder / "item_ids.txt").write_text("\n".join(m.item_ids))
    (folder / "pool_ids.txt").write_text("\n".join(m.pool_ids))
    users = sorted(m.user_index, key=m.user_index.__getitem__)
    (folder / "user_ids.txt").write_text("\n".join(users))
    indexes = {}
    for attr, file in _INDEXES.items():
        index: AnnIndex | None = getattr(m, attr)
        if index is not None:
            index.save(folder / file)
            indexes[attr] = file
    manifest = {
        "format": _FORMAT, "version": m.version, "alpha": m.alpha, "reg": m.reg,
        "tf_hidden_layers": len(m.tf_hidden), "has_user_factors": m.user_factors is not None,
        "tf_out_is_scan": m.tf_out is not None and m.scan_rows is None,
        "indexes": indexes, "arrays": sorted(arrays),
        "ann": None if m.ann is None else m.ann.__dict__,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))  # written last: the folder is whole


def _ids(path: Path) -> list[str]:
    text = path.read_text()
    return text.split("\n") if text else []


def open_model(folder: Path, version: str) -> PublishedModel:
    """The :class:`PublishedModel` saved in ``folder``, its arrays and graphs mapped read-only."""
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format") != _FORMAT or manifest.get("version") != version:
        raise ValueError(f"{folder} holds {manifest.get('version')!r} (format {manifest.get('format')}), "
                         f"not {version!r}")
    names = set(manifest["arrays"])

    def arr(name: str) -> Any:
        return np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) if name in names else None

    item_ids = _ids(folder / "item_ids.txt")
    hidden = [(arr(f"tf_hidden{i}_W"), arr(f"tf_hidden{i}_b")) for i in range(manifest["tf_hidden_layers"])]
    # Built without the TF output layer and scan pool: __post_init__ would copy them; they are
    # set from the files below.
    m = PublishedModel(version=version, item_ids=item_ids, item_index={i: j for j, i in enumerate(item_ids)},
                       Y=arr("Y"), YtY=np.array(arr("YtY")), alpha=float(manifest["alpha"]),
                       reg=float(manifest["reg"]), tf_hidden=hidden)
    m.pool_ids = _ids(folder / "pool_ids.txt")
    m.pool_unit = arr("pool_unit")
    if manifest["has_user_factors"]:
        m.user_factors = arr("user_factors")
        m.user_index = {u: j for j, u in enumerate(_ids(folder / "user_ids.txt"))}
    rows = arr("scan_rows")
    m.scan_rows = None if rows is None else np.array(rows)
    m.scan_ids = item_ids if m.scan_rows is None else [item_ids[j] for j in m.scan_rows.tolist()]
    m.scan_Y = arr("scan_Y")
    m.scan_tf_out, m.scan_tf_bias = arr("scan_tf_out"), arr("scan_tf_bias")
    m.tf_out = m.scan_tf_out if manifest["tf_out_is_scan"] else None
    m.tf_out_bias = arr("tf_out_bias")
    m._norms = arr("norms")
    n_scan = m.scan_Y.shape[0]
    m._vec_buf = np.empty(n_scan, dtype=np.float32)
    m._tf_buf = np.empty(n_scan, dtype=np.float32)
    if manifest["ann"] is not None:
        m.ann = AnnConfig(**manifest["ann"])
    for attr, file in manifest["indexes"].items():
        setattr(m, attr, AnnIndex.open(folder / file, m.ann.expansion if m.ann is not None else None))
    return m
