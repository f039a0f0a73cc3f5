"""Metrics."""


def __getattr__(name: str):  # fid/rfid need torch-fidelity + scipy (the `eval` extra): import them on first use
    if name == "fid":
        from vistok.metrics.fidelity import fid

        return fid
    if name == "rfid":
        from vistok.metrics.reconstruction_fid import rfid

        return rfid
    raise AttributeError(f"module 'vistok.metrics' has no attribute {name!r}")
