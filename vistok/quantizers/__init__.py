"""Quantizers: one module each, all returning QuantizerOutput."""
