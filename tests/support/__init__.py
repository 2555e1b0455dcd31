"""Helpers shared by Moko's tests (the fake GitHub lives in tests/fakegithub)."""
