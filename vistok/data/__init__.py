"""Data (helper writes this)."""
