"""Stand-ins for a subgroup that may not be read: retained items of its class with the attribute swapped.

    x_swapped, index = swap_attributes(feats, labels, attrs, values, ci, {"ink": "red"})

A subgroup is class c where attribute k = a. Its images are off limits to data-free methods, but the
class's other items (k = v) and the other classes' items with k = a are retained. If features are
roughly additive in class and attribute, f(c, a) ~ f(c, v) - mu_k(v) + mu_k(a), where mu_k(v) is the
mean feature of the OTHER classes' items with k = v (they carry the attribute without the class).
`feats` may be any per-item tensor: final image features (attribute_edit) or the vision tower's
token stream after some block (standin_subgroup); the means are taken per element.
"""

from __future__ import annotations

import numpy as np
import torch


def item_attributes(ds, keys) -> dict[str, np.ndarray]:
    """Per attribute key, every item's value (None where an item has none)."""
    return {k: np.array([ds.item_attrs(i).get(k) for i in range(len(ds))]) for k in keys}


def attribute_means(feats: torch.Tensor, attrs: np.ndarray, mask: np.ndarray, values: list[str]) -> dict:
    """Mean feature of the masked items per attribute value (values without items are left out)."""
    return {v: feats[torch.from_numpy(mask & (attrs == v))].mean(0) for v in values if (mask & (attrs == v)).any()}


def swap_attributes(feats: torch.Tensor, labels: torch.Tensor, attrs: dict[str, np.ndarray],
                    values: dict[str, list[str]], ci: int, where: dict[str, str],
                    dataset: str = "the dataset") -> tuple[torch.Tensor, torch.Tensor]:
    """(stand-ins, index into feats they were made from): every item of class ci whose attribute values
    all have means, shifted to `where`'s values. A value no other class carries cannot be learned:
    ValueError (auto then tries its next method)."""
    rest = (labels == ci).cpu().numpy()
    ok = rest.copy()
    shift = torch.zeros_like(feats)
    for k, a in where.items():
        means = attribute_means(feats, attrs[k], ~rest, values[k])
        if a not in means:
            raise ValueError(f"no other class of {dataset} has {k}={a}; nothing to learn the attribute from")
        ok &= np.array([v in means for v in attrs[k]])
        shift += torch.stack([means[a] - means.get(v, means[a]) for v in attrs[k]])
    index = torch.from_numpy(np.flatnonzero(ok))
    return feats[index] + shift[index], index
