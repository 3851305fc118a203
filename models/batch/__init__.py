"""Batch recommenders behind one contract (:class:`BatchModel`) and their registry."""

from driftrec.models.batch.base import BatchModel, load_path
from driftrec.models.batch.registry import MODELS, create_model

__all__ = ["MODELS", "BatchModel", "create_model", "load_path"]
