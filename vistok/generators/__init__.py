"""Generators (helper writes this)."""
