"""Task heads on the student's [CLS] state for retrieval and NLVR2, and what their losses share.

Retrieval (OSCAR): a 2-way matching head (not matched / matched) scores an (image, caption)
pair seen together by the fusion: exact but one fusion pass per pair, quadratic over a
pool. A cheap first stage beside it: the same encoder embeds an image (its tags and
regions, no caption) and a caption (text only, no image) apart, each projected to a unit
vector; a dot product ranks a pool for the matching head to re-rank the top k. Both are
trained together, the embeddings with a symmetric InfoNCE over the batch, the matching head
on the batch's positives and its hardest negatives by embedding similarity.

NLVR2 (OSCAR): each image is encoded with the statement; the two [CLS] states, concatenated,
go to a classifier (false / true).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NOT_MATCHED, MATCHED_PAIR = 0, 1  # the matching head's classes
INITIAL_TEMPERATURE = 0.07  # CLIP's: the embeddings' similarity logits are cosine / 0.07 at first


class RetrievalHeads(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.matching = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        self.image = nn.Linear(hidden, hidden)
        self.text = nn.Linear(hidden, hidden)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / INITIAL_TEMPERATURE)))

    @torch.no_grad()
    def start_from(self, contrastive: nn.Sequential, matched: int, polluted_caption: int) -> None:
        """Start the matching head as pre-training's contrastive head restricted to its matched and
        polluted-caption classes: the same question ("is this the image's caption?"), already learned."""
        self.matching[0].load_state_dict(contrastive[0].state_dict())
        self.matching[2].weight.copy_(contrastive[2].weight[[polluted_caption, matched]])
        self.matching[2].bias.copy_(contrastive[2].bias[[polluted_caption, matched]])

    def match_score(self, cls: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N,): the matched logit minus the not-matched one (log-odds of a match)."""
        logits = self.matching(cls)  # (N, 2)
        return logits[:, MATCHED_PAIR] - logits[:, NOT_MATCHED]

    def embed(self, cls: torch.Tensor, side: str) -> torch.Tensor:
        """(N, H) [CLS] states of images or captions -> (N, H) unit vectors."""
        return F.normalize((self.image if side == "image" else self.text)(cls), dim=-1)


def info_nce(similarity: torch.Tensor, same: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over a batch: similarity (B, B) image x caption, pair i the positive of
    row i and column i; `same` (B, B) marks off-diagonal pairs that are positives too (the same
    caption text), left out of the negatives. Returns (loss, share of images whose own caption
    ranks first)."""
    eye = torch.eye(len(similarity), dtype=torch.bool, device=similarity.device)
    logits = (similarity * scale.exp().clamp(max=100)).masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(similarity), device=similarity.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    with torch.no_grad():
        accuracy = (logits.argmax(1) == target).float().mean()
    return loss, accuracy


@torch.no_grad()
def hardest_negatives(similarity: torch.Tensor, same: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image its most similar caption that is not its own (nor the same text), and for
    each caption its most similar other image: (B,) caption indices, (B,) image indices; -1
    where the batch has no negative (every caption the same text)."""
    eye = torch.eye(len(similarity), dtype=torch.bool, device=similarity.device)
    masked = similarity.masked_fill(same | eye, float("-inf"))
    caption = masked.argmax(1)
    image = masked.argmax(0)
    caption[torch.isinf(masked.max(1).values)] = -1
    image[torch.isinf(masked.max(0).values)] = -1
    return caption, image


class PairClassifier(nn.Module):
    """NLVR2: (2B, H) [CLS] states, left and right interleaved -> (B, 2) logits (false, true)."""

    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.GELU(), nn.LayerNorm(2 * hidden, eps=eps),
                                 nn.Linear(2 * hidden, 2))

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        assert cls.shape[0] % 2 == 0, cls.shape
        return self.net(cls.reshape(cls.shape[0] // 2, -1))  # (B, 2H): left then right
