"""Fault tests: damaged state, a full or read-only state dir."""
