//! The published model mapped from the reader's shared folder: a port of online/model_cache.py (work in progress).
