"""What to forget: classes of a dataset, or a subgroup (classes restricted by attribute values).

    req = ForgetRequest(dataset="digits", classes=["seven"])                       # a class
    req = ForgetRequest(dataset="digits", classes=["seven"], where={"ink": "red"})  # a subgroup
    req.check(classes, attributes)      # raises ConfigError naming what is wrong
"""

from __future__ import annotations

import difflib

from pydantic import Field

from clip_unlearn.schema import ConfigError, Section


def _suggest(value: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(value, allowed, n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"{value!r}{hint} (allowed: {', '.join(allowed)})"


class ForgetRequest(Section):
    dataset: str
    classes: list[str] = Field(min_length=1)
    where: dict[str, str] = Field(default_factory=dict)

    @property
    def is_subgroup(self) -> bool:
        return bool(self.where)

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
