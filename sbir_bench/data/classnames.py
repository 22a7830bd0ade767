"""Class folder names -> the words CLIP reads, in one place.

Dataset folders spell classes in several ways (Sketchy ``hot-air_balloon``, ``car_(sedan)``;
TU-Berlin ``computer-mouse``, ``t-shirt``). Every text that reaches CLIP (learned prompts, frozen
class text, SpLIP's margin matrix, the tiny backbone's captions) and every match between folder
names, split files and class lists goes through these two functions, so they all see one string.

The words CLIP reads follow CoOp's and MaPLe's official code (``classname.replace("_", " ")``):
``_`` becomes a space, runs of whitespace collapse, and hyphens, parentheses and case are kept:
``car_(sedan)`` -> ``car (sedan)``, ``t-shirt`` -> ``t-shirt``, ``hot-air_balloon`` -> ``hot-air
balloon``. Matching folder names against split files and class lists is looser (:func:`class_key`:
case-, ``_``- and ``-``-insensitive), because copies of one dataset spell the same class both ways.

>>> class_text("hot-air_balloon")
'hot-air balloon'
>>> class_text("t-shirt")
't-shirt'
>>> class_key("Hot-Air_Balloon") == class_key("hot air balloon")
True
"""

from __future__ import annotations


def class_text(name: str) -> str:
    """The words CLIP reads for class folder ``name`` (the reference code's rule: ``_`` -> space)."""
    return " ".join(name.replace("_", " ").split())


def class_key(name: str) -> str:
    """Matching key, insensitive to case, ``_`` and ``-``: two spellings of a class match when their
    keys are equal (``hot-air_balloon``, ``hot air balloon``)."""
    return " ".join(name.replace("-", " ").replace("_", " ").split()).lower()
