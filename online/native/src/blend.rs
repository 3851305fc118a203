//! The blend and its inputs: a port of models/blend.py and models/candidates.py (work in progress).
