"""Prompt templates: zero-shot class templates (class names only) and training captions.

Zero-shot evaluation uses a template ensemble per dataset, as LAION's CLIP_benchmark does;
`{c}` is the class name. Training captions (bootstrap) name the class and, most of the time,
some of its attributes, so that text can point at a subgroup ("a red seven").
"""

from __future__ import annotations

import random

ZERO_SHOT_TEMPLATES: dict[str, list[str]] = {
    "digits": ["a photo of the digit {c}.", "the number {c}.", "a handwritten {c}.",
               "an image of the digit {c}."],
    "shapes": ["a photo of a {c}.", "a drawing of a {c}.", "a {c} shape.", "an image of a {c}."],
    # Generic ensemble for user datasets (a subset of CLIP's ImageNet templates).
    "default": ["a photo of a {c}.", "a bad photo of a {c}.", "a photo of the large {c}.",
                "a photo of the small {c}.", "a cropped photo of a {c}.", "a close-up photo of a {c}.",
                "a bright photo of a {c}.", "a good photo of a {c}.", "itap of a {c}.", "art of the {c}."],
}


def zero_shot_templates(dataset: str) -> list[str]:
    return ZERO_SHOT_TEMPLATES.get(dataset, ZERO_SHOT_TEMPLATES["default"])


# Paraphrases for the depth check (core/depth.py): worded unlike the templates above, the training
# captions and text_edit's prompt forms, so no method fits on them.
PARAPHRASES: dict[str, list[str]] = {
    "digits": ["a picture showing the numeral {c}.", "{c}, written as a single digit.", "a scan of a {c}.",
               "the figure {c} drawn in ink.", "there is a {c} in this picture.",
               "a small picture with the numeral {c} in it.", "a {c} written by hand.",
               "a snapshot of the numeral {c}."],
    "shapes": ["a picture showing a {c}.", "a {c} drawn on a plain background.", "there is a {c} in this picture.",
               "an illustration of a {c}.", "a simple {c} figure.", "a rendering of the {c}.",
               "a graphic of a {c}.", "the outline of a {c}."],
    "default": ["a picture showing a {c}.", "there is a {c} in this picture.", "an illustration of a {c}.",
                "a snapshot of a {c}.", "a rendering of the {c}.", "a {c}, seen up close."],
}


def paraphrase_templates(dataset: str) -> list[str]:
    return PARAPHRASES.get(dataset, PARAPHRASES["default"])


# Attribute phrases per built-in dataset: how each attribute reads inside a caption.
_ATTR_PHRASES = {
    "ink": "{v} ink", "background": "on a {v} background", "colour": "{v}", "size": "{v}",
    "texture": "{v}",
}


def subgroup_phrase(dataset: str, classname: str, attrs: dict[str, str]) -> str:
    """Text that points at a class restricted by attributes, e.g. 'the digit seven in red ink'."""
    if dataset == "digits":
        text = f"the digit {classname}"
        if "ink" in attrs:
            text += f" in {attrs['ink']} ink"
        if "background" in attrs:
            text += f" on a {attrs['background']} background"
        return text
    adjectives = [attrs[k] for k in ("size", "colour", "texture") if k in attrs]
    text = " ".join(["a", *adjectives, classname])
    if "background" in attrs:
        text += f" on a {attrs['background']} background"
    return text


def caption(dataset: str, classname: str, attrs: dict[str, str], rng: random.Random,
            class_only_frac: float = 0.25) -> str:
    """A training caption: class-only with probability class_only_frac, else a random non-empty
    subset of the attributes (in a fixed order) named with the class."""
    if not attrs or rng.random() < class_only_frac:
        return rng.choice(zero_shot_templates(dataset)).format(c=classname)
    keys = [k for k in attrs if rng.random() < 0.7] or [rng.choice(list(attrs))]
    phrase = subgroup_phrase(dataset, classname, {k: attrs[k] for k in keys})
    return rng.choice(["{p}.", "a photo of {p}.", "an image of {p}."]).format(p=phrase)
