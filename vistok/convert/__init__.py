"""Converters from other projects' released checkpoints to vistok tokenizers (``python -m vistok.convert.<name>``).

Each maps a published state dict key by key onto a vistok architecture built with the matching options, loads it
strictly (every tensor used, every parameter set, shapes equal) and writes an ordinary ``save_pretrained`` folder.
"""
