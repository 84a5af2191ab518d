"""Ranking edit candidates with CLIP on the edited region (Blended Latent Diffusion, section 4.4).

Each candidate is multiplied by the mask, so only the edited region is judged, resized to CLIP's
input size and embedded. Its distance to the prompt is the cosine distance between the two
L2-normalised embeddings; the best candidate is the nearest. Scores are reported as the cosine
similarity (``1 - distance``), so that, as everywhere in faraday, higher is better.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipelines.candidate_chunks import CandidateChunks
from pipelines.clip_models import ClipBundle


def masked_for_clip(images: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
    """``images × mask`` resized to ``size``² for CLIP.

    images: (N, 3, H, W) in [0, 1]; mask: (1, 1, H, W) or (N, 1, H, W), 0/1. The whole frame is
    resized (not centre-cropped, as CLIP's own preprocessing would) so no part of a mask near an
    edge is cut off; the official ranking resizes to 224 the same way.
    """
    masked = images * mask.to(images.dtype)
    resized = F.interpolate(
        masked, size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )
    return resized.clamp(0.0, 1.0)


@torch.no_grad()
def clip_similarities(
    clip: ClipBundle,
    images: torch.Tensor,
    mask: torch.Tensor,
    prompt: str,
    chunks: CandidateChunks | None = None,
) -> torch.Tensor:
    """Cosine similarity between each masked image's CLIP embedding and the prompt's, (N,).

    ``chunks`` splits the images into batches for CLIP (``[models] candidate_batch``); without
    it they go through in one batch. The scores are the same either way.
    """
    pixels = masked_for_clip(
        images.to(clip.device, torch.float32), mask.to(clip.device), clip.input_size
    )

    def embed(start: int, stop: int) -> torch.Tensor:
        return clip.encode_image(pixels[start:stop])

    if chunks is None:
        image_embeddings = F.normalize(embed(0, len(pixels)), dim=-1)
    else:
        image_embeddings = F.normalize(chunks.run(len(pixels), embed), dim=-1)
    text_embedding = F.normalize(clip.encode_text([prompt]), dim=-1)
    return (image_embeddings @ text_embedding.T).squeeze(1).cpu()


def order_best_first(scores: torch.Tensor) -> list[int]:
    """Indices by descending score; ties keep candidate order, so a seed always ranks the same."""
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
