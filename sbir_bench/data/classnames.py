"""Class folder names -> the words CLIP reads, in one place.

Dataset folders spell classes in several ways (Sketchy ``hot-air_balloon``, ``car_(sedan)``;
TU-Berlin ``computer-mouse``, ``t-shirt``). Every text that reaches CLIP (learned prompts, frozen
class text, SpLIP's margin matrix, the tiny backbone's captions) and every match between folder
names, split files and class lists goes through these two functions, so they all see one string.

The rule: ``_`` and ``-`` become spaces, runs of whitespace collapse, everything else (parentheses,
case) is kept: ``car_(sedan)`` -> ``car (sedan)``, ``jack-o-lantern`` -> ``jack o lantern``.

>>> class_text("hot-air_balloon")
'hot air balloon'
>>> class_key("Hot-Air_Balloon") == class_key("hot air balloon")
True
"""

from __future__ import annotations


def class_text(name: str) -> str:
    """The words CLIP reads for class folder ``name`` (see the module docstring for the rule)."""
    return " ".join(name.replace("_", " ").replace("-", " ").split())


def class_key(name: str) -> str:
    """Case-insensitive matching key: two spellings of a class match when their keys are equal."""
    return class_text(name).lower()
