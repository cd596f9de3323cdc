"""The tile CNN: training, saving with a version, loading, and batched prediction."""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from constellation_core.inference.imagery import CLASSES
from constellation_core.vocabulary import LANDCOVER_CNN

MODEL_NAME = LANDCOVER_CNN


class TileCNN(nn.Module):
    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


@dataclass
class TrainedModel:
    model: TileCNN
    version: str
    accuracy: float
    train_seconds: float

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.version}.pt"
        torch.save({"state_dict": self.model.state_dict(), "version": self.version, "classes": CLASSES,
                    "accuracy": self.accuracy}, path)
        return path


def _version(model: nn.Module) -> str:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return f"{MODEL_NAME}@{hashlib.sha256(buffer.getvalue()).hexdigest()[:12]}"


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.inference_mode():
        predicted = model(to_tensor(images)).argmax(1).numpy()
    return float((predicted == labels).mean())


def train(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
          epochs: int = 6, batch_size: int = 64, seed: int = 0) -> TrainedModel:
    """Train on CPU (deterministic for a seed) and report held-out accuracy."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    model = TileCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    x, y = to_tensor(train_x), torch.from_numpy(train_y)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            optimiser.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimiser.step()
    held_out = accuracy(model, test_x, test_y)
    return TrainedModel(model, _version(model), held_out, time.perf_counter() - started)


class TileClassifier:
    """A loaded model on one device, classifying batches of tiles."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
        self.version: str = checkpoint["version"]
        self.classes: tuple[str, ...] = tuple(checkpoint["classes"])
        self.device = torch.device(device)
        self.model = TileCNN(len(self.classes)).to(self.device)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.eval()

    def predict(self, images: np.ndarray) -> tuple[list[str], list[float]]:
        """(N, H, W, 3) uint8 → class names and confidences (softmax probability of the class)."""
        with torch.inference_mode():
            logits = self.model(to_tensor(images).to(self.device, non_blocking=True))
            confidence, index = torch.softmax(logits, dim=1).max(dim=1)
        return [self.classes[i] for i in index.tolist()], confidence.tolist()
