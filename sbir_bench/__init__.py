"""sbir-bench: CLIP prompt-learning methods for zero-shot sketch-based image retrieval.

The package is organised one concept per module (docs/architecture.md walks through a run):
``data`` (dataset catalog, discovery, splits, the mini set, ZS / GZS / FG tasks), ``models``
(open_clip backbones, their preprocessing, a prompt-injectable view of their encoders),
``methods`` (the plug-in interface), ``engine`` (the one trainer every method shares),
``embedding`` and ``feature_cache`` (images -> embeddings), ``retrieval`` (protocols and exact,
fast metrics), ``runner`` (one run, as named steps), ``records`` and ``reporting`` (records,
compare tables, export, plots) and ``cli``. Library code logs through the ``sbir_bench`` logger.
"""

import logging

__version__ = "0.1.0"
logging.getLogger("sbir_bench").addHandler(logging.NullHandler())


def load_model(where, pretrained=None, device="cpu", class_names=None):
    """A trained model from its run record, run folder or ``model.json`` (see :mod:`sbir_bench.artifacts`)::

        m = sbir_bench.load_model("results/runs/<run-id>.json")
        similarity = m.embed_sketches(sketches) @ m.embed_photos(photos).T
    """
    # lazy: `import sbir_bench` stays light until a model is loaded
    from .artifacts import load_model as _load
    return _load(where, pretrained, device, class_names)
