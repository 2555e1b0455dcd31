"""Moko's tests."""
