"""The plain training loop a user would write, as a reference for the project's own recipe.

timm ResNet-18 from scratch, plain torchvision transforms (flips only), AdamW at a constant
learning rate, a fixed number of epochs, the last epoch's model evaluated once on the test split:
no validation, no model selection, no schedule. It reads a split manifest (the same one the
project trains on) and writes, into --out:

    predictions.csv   image_id, label, pred, prob_<CLASS> (the project's predictions contract)
    reference.json    the settings, seconds, and test balanced accuracy, accuracy and recall per class

    python scripts/reference_timm_loop.py --manifest data_manifests/acne04_crops.split.csv \\
        --root data/derived/acne04_crops --classes comedone papule pustule nodule_cyst \\
        --loss ce --seed 0 --out results/reference/ce/seed0

Losses: ``ce``; ``weighted_ce`` (inverse class frequency, N / (C n_c)); ``balanced_softmax``
(Ren et al., NeurIPS 2020: cross-entropy on logits + log n_c, raw logits at test time).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Crops(Dataset):
    def __init__(self, frame: pd.DataFrame, root: Path, classes: list[str], transform) -> None:
        self.paths = [root / p for p in frame["image_path"]]
        self.targets = [classes.index(label) for label in frame["label"]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.targets[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="folder the manifest's image_path is relative to")
    parser.add_argument("--classes", nargs="+", required=True)
    parser.add_argument("--loss", choices=["ce", "weighted_ce", "balanced_softmax"], default="ce")
    parser.add_argument("--train-splits", nargs="+", default=["train"], help="manifest splits to train on")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--image-size", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    frame = pd.read_csv(args.manifest, dtype=str, keep_default_na=False)
    train_frame = frame[frame["split"].isin(args.train_splits)]
    test_frame = frame[frame["split"] == "test"]
    size = (args.image_size, args.image_size)
    train_tf = T.Compose([T.Resize(size), T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.ToTensor(),
                          T.Normalize(MEAN, STD)])
    test_tf = T.Compose([T.Resize(size), T.ToTensor(), T.Normalize(MEAN, STD)])
    train_set = Crops(train_frame, args.root, args.classes, train_tf)
    test_set = Crops(test_frame, args.root, args.classes, test_tf)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True)

    counts = torch.bincount(torch.tensor(train_set.targets), minlength=len(args.classes)).float()
    weight = counts.sum() / (len(counts) * counts) if args.loss == "weighted_ce" else None
    offset = counts.log() if args.loss == "balanced_softmax" else torch.zeros(len(counts))

    model = timm.create_model(args.model, pretrained=False, num_classes=len(args.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    for epoch in range(args.epochs):
        model.train()
        total, seen = 0.0, 0
        for images, targets in loader:
            loss = F.cross_entropy(model(images) + offset, targets, weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(targets), seen + len(targets)
        print(f"epoch {epoch + 1}/{args.epochs} loss {total / seen:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)

    model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(images), 1) for images, _ in DataLoader(test_set, batch_size=256)]).numpy()
    truth, pred = np.array(test_set.targets), probs.argmax(1)
    args.out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"image_id": test_frame["image_id"].to_numpy(), "label": test_frame["label"].to_numpy(),
                          "pred": np.asarray(args.classes)[pred]})
    for i, code in enumerate(args.classes):
        table[f"prob_{code}"] = probs[:, i]
    table.to_csv(args.out / "predictions.csv", index=False)
    recalls = recall_score(truth, pred, labels=range(len(args.classes)), average=None, zero_division=0)
    result = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "seconds": round(time.perf_counter() - started, 1),
              "train_class_counts": counts.int().tolist(),
              "balanced_accuracy": balanced_accuracy_score(truth, pred), "accuracy": accuracy_score(truth, pred),
              "recall": dict(zip(args.classes, recalls.tolist()))}
    (args.out / "reference.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("seconds", "balanced_accuracy", "accuracy", "recall")}))


if __name__ == "__main__":
    main()
