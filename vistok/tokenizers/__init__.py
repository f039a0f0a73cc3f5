"""Tokenizers: images <-> tokens behind one interface."""
