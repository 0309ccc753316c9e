"""Tensor-level CLIP operations shared by training, evaluation and the unlearning methods.

    x = to_model_input(bundle, images_uint8)          # resize + normalize, on the model's device
    img = encode_image(bundle.model, x, normalize=True)
    txt = encode_text(bundle.model, tokens, normalize=True)
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch.nn.attention import SDPBackend, sdpa_kernel

from clip_unlearn.core.models import ClipBundle


def to_model_input(bundle: ClipBundle, images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] (or float in [0,1]) -> normalized float at the model's input size."""
    x = images.to(bundle.device)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.shape[-1] != bundle.image_size or x.shape[-2] != bundle.image_size:
        x = F.interpolate(x, size=(bundle.image_size, bundle.image_size), mode="bicubic",
                          align_corners=False).clamp_(0, 1)
    mean = torch.tensor(bundle.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def pixel_bounds(bundle: ClipBundle, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (low, high) of valid pixels in normalized space, shaped [1,3,1,1]."""
    mean = torch.tensor(bundle.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std, device=device).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def encode_image(model: torch.nn.Module, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    return model.encode_image(x, normalize=normalize)


def encode_text(model: torch.nn.Module, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """open_clip's encode_text, run only up to the longest caption in the batch.

    With a causal mask and end-of-text pooling, positions after the last end-of-text token
    cannot change the pooled feature, so cutting them is exact and saves most of the text
    tower's work for short captions. Models of another kind fall back to encode_text."""
    if not (isinstance(model, CLIP) and model.text_pool_type == "argmax" and model.attn_mask is not None):
        return model.encode_text(tokens, normalize=normalize)
    x = text_pooled(model, tokens)
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
            else x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def text_pooled(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The text tower's pooled feature before `text_projection` (open_clip CLIP, argmax pooling)."""
    n = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :n]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]


@torch.no_grad()
def encode_texts(bundle: ClipBundle, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """Normalized text features for a list of strings."""
    feats = [encode_text(bundle.model, bundle.tokenizer(texts[i:i + batch_size]).to(bundle.device), True)
             for i in range(0, len(texts), batch_size)]
    return torch.cat(feats).float()


@torch.no_grad()
def encode_images(bundle: ClipBundle, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Normalized image features for uint8 images [N,3,H,W]."""
    feats = [encode_image(bundle.model, to_model_input(bundle, images[i:i + batch_size]), True)
             for i in range(0, len(images), batch_size)]
    return torch.cat(feats).float() if feats else torch.empty(0, bundle.model_cfg["embed_dim"])


def fast_cpu_attention(device: torch.device):
    """On CPU, PyTorch's plain math attention trains ~2x faster than the fused kernel for this
    tiny model (its backward dominated each step). Returns a context manager; the caller must
    keep it alive while in use."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])
