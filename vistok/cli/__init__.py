"""Command-line entry points. Each is both a top-level script (``python train.py``, ``python eval/fid.py``) and a
console command installed with the package (``vistok-train``, ``vistok-sample``, ``vistok-eval fid``)."""
