"""How much the published Sketchy galleries' duplicates move mAP@all and P@100, on a generated example.

    python benchmarks/published_gallery.py            # Sketchy-Ext split 1's shape
    python benchmarks/published_gallery.py --split 2

SAKE's and ZSE-SBIR's Sketchy photo lists hold every original photo twice (docs/metrics.md). The
example has split 1's shape: 25 classes, 15,229 sketches, 14,601 unique photos of which 2,500 are
originals (100 per class), the originals listed again for the published gallery (17,101). Sketches
are drawn from originals, so a sketch sits nearer the original it depicts (and its class's other
originals, same photographers' viewpoint) than the extended web photos: ``--original-pull`` sets how
much. The same embeddings are scored on both galleries under the default protocol and SAKE's.
Generated with numpy from a fixed seed: the numbers do not depend on the machine beyond the last bits.
"""

from __future__ import annotations

import argparse

import numpy as np

SHAPES = {"1": (25, 15_229, 14_601, 100), "2": (21, 12_694, 10_453, 100)}


def example(split: str, pull: float, dim: int = 64, seed: int = 0):
    """(query, gallery, query labels, gallery labels, original mask) with split ``split``'s shape."""
    classes, n_query, n_gallery, originals_per_class = SHAPES[split]
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    gl = np.repeat(np.arange(classes), int(np.ceil(n_gallery / classes)))[:n_gallery]
    original = np.zeros(n_gallery, bool)
    for c in range(classes):
        original[np.flatnonzero(gl == c)[:originals_per_class]] = True
    photos = 0.6 * centres[gl] + rng.normal(size=(n_gallery, dim))
    depicted = rng.choice(np.flatnonzero(original), n_query)  # each sketch depicts an original photo
    ql = gl[depicted]
    sketches = 0.6 * centres[ql] + pull * photos[depicted] + rng.normal(size=(n_query, dim))
    return sketches, photos, ql, gl, original


def main() -> None:
    from sbir_bench.retrieval.engine import evaluate
    from sbir_bench.retrieval.protocol import PRESETS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=sorted(SHAPES), default="1")
    ap.add_argument("--original-pull", type=float, default=0.5)
    args = ap.parse_args()
    q, g, ql, gl, original = example(args.split, args.original_pull)
    g_pub, gl_pub = np.concatenate([g, g[original]]), np.concatenate([gl, gl[original]])
    print(f"split {args.split}: {len(q):,} sketches; unique gallery {len(g):,}, published {len(g_pub):,} "
          f"({int(original.sum()):,} originals listed twice)")
    for preset in ("sbir-bench", "sake"):
        unique = evaluate(q, g, ql, gl, protocol=PRESETS[preset], desc="unique").metrics
        published = evaluate(q, g_pub, ql, gl_pub, protocol=PRESETS[preset], desc="published").metrics
        for metric in ("mAP@all", "P@100"):
            print(f"  {preset:<10} {metric:<8} unique {unique[metric]:.4f}  published {published[metric]:.4f}  "
                  f"delta {published[metric] - unique[metric]:+.4f}")


if __name__ == "__main__":
    main()
