"""What to forget, and what a model forgot before.

    req = ForgetRequest(dataset="digits", classes=["seven"])                       # a class
    req = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})  # a subgroup
    req.check(classes, attributes)      # raises ConfigError naming what is wrong
    earlier = Earlier(request_id="gdpr-1", forgotten="digits:seven", limit=0.05, version="2")

ForgetRequest is the one type for "what to forget": the job request (pipeline.request_store),
the params default (params.yaml forget:) and the benchmark's entries all extend or reuse it.
"""

from __future__ import annotations

import difflib
import re

import numpy as np
from pydantic import ConfigDict, Field, field_validator

from clip_unlearn.core.schema import ConfigError, Section


def _suggest(value: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(value, allowed, n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"{value!r}{hint} (allowed: {', '.join(allowed)})"


class ForgetRequest(Section):
    dataset: str = Field(min_length=1)
    classes: list[str] = Field(min_length=1)
    where: dict[str, str] = Field(default_factory=dict)

    @property
    def is_subgroup(self) -> bool:
        return bool(self.where)

    @classmethod
    def parse(cls, text: str) -> "ForgetRequest":
        """The inverse of describe(): "digits:seven+three[ink=red]" -> ForgetRequest."""
        m = re.fullmatch(r"([^:\[]+(?::[^\[]*?)?):([^:\[\]]+)(?:\[(.*)\])?", text.strip())
        if not m:
            raise ConfigError(f"cannot read {text!r} as dataset:class[+class][key=value,...]")
        where = dict(kv.split("=", 1) for kv in m.group(3).split(",")) if m.group(3) else {}
        return cls(dataset=m.group(1), classes=m.group(2).split("+"), where=where)

    def covers(self, ds) -> "np.ndarray":
        """Boolean mask over ds (an ImageDataset of this request's dataset) of the items it names."""
        if ds.name != self.dataset.split(":")[0]:
            return np.zeros(len(ds), dtype=bool)
        labels = {ds.classes.index(c) for c in self.classes if c in ds.classes}
        return np.array([y in labels and all(ds.item_attrs(i).get(k) == v for k, v in self.where.items())
                         for i, y in enumerate(ds.labels)], dtype=bool)

    def describe(self) -> str:
        cond = ",".join(f"{k}={v}" for k, v in sorted(self.where.items()))
        return f"{self.dataset}:{'+'.join(self.classes)}" + (f"[{cond}]" if cond else "")

    def check(self, classes: list[str], attributes: dict[str, list[str]]) -> "ForgetRequest":
        """Validate names against the dataset; forgetting every class is refused."""
        for c in self.classes:
            if c not in classes:
                raise ConfigError(f"forget.classes: unknown class {_suggest(c, classes)} in dataset {self.dataset!r}")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"forget.classes: {self.classes} names a class twice")
        for key, value in self.where.items():
            if key not in attributes:
                raise ConfigError(f"forget.where: unknown attribute {_suggest(key, list(attributes))}"
                                  if attributes else f"forget.where: dataset {self.dataset!r} has no attributes")
            if value not in attributes[key]:
                raise ConfigError(f"forget.where.{key}: unknown value {_suggest(value, attributes[key])}")
        if not self.where and set(self.classes) == set(classes):
            raise ConfigError(f"forget.classes: forgetting every class of {self.dataset!r} leaves nothing to "
                              "keep or to verify against; name a subset of the classes.")
        return self


class Earlier(Section):
    """An earlier erasure of a model's lineage: what it forgot (a ForgetRequest.describe()), the
    forget top-1 limit it was verified at, and the version that made it. Later erasures never read
    its items and re-measure it against its own limit."""
    model_config = ConfigDict(extra="ignore", frozen=True)   # registry tags may carry more keys

    request_id: str
    forgotten: str
    limit: float | None = None
    version: str | None = None

    @property
    def request(self) -> ForgetRequest:
        return ForgetRequest.parse(self.forgotten)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v):
        return None if v is None else str(v)
