"""driftrec: a streaming real-time recommender for e-commerce (shared package: settings, schema, keys, CLI)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
