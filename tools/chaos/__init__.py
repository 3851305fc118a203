"""Fault injection, load and state checks for the chaos, soak and scale benchmarks and their tests."""
