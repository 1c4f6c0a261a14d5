"""The seed's classifier (section 1.4): a CAE encoder followed by a small head."""

import torch
from torch import nn


class Classifier(nn.Module):
    """(B, 1, 28, 28) -> (B, 10) log-probabilities."""

    def __init__(self, encoder: nn.Module, encoded_space_dim: int, n_classes: int = 10):
        super().__init__()
        self.encoder = encoder
        self.encoder_frozen = False
        self.head = nn.Sequential(
            nn.Linear(encoded_space_dim, 64),
            nn.ReLU(True),
            nn.Linear(64, n_classes),
            nn.LogSoftmax(dim=1),
        )

    def freeze_encoder(self) -> None:
        """Only the head learns from here on (the seed's fine-tuning); the encoder stays in eval
        mode even under .train(), so BatchNorm statistics, if it has any, do not move either."""
        self.encoder_frozen = True
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))  # (B, 1, 28, 28) -> (B, d) -> (B, 10)
