"""sbir-bench: CLIP prompt-learning methods for zero-shot sketch-based image retrieval.

The package is organised one concept per module: ``data`` (datasets, splits, mini set),
``settings`` (ZS / GZS / FG query-gallery composition), ``models`` (open_clip backbones and a
prompt-injectable view of their encoders), ``methods`` (the plug-in interface and registry),
``engine`` (the one trainer every method shares), ``retrieval`` (exact, fast metrics) and
``reporting`` (records, compare tables, export, plots).
"""

__version__ = "0.1.0"
