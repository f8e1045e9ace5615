"""AP of an untrained (random-init) detector on a dataset split: the floor a training run must beat.

    python bench/untrained_baseline.py --data ../shared/datasets/raccoon \
        --model retinanet_resnet18_fpn --image-size 320 --seed 0
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from bmgkd_core.data import load_dataset
from bmgkd_core.models import build_detector
from bmgkd_core.train.checkpoint import save_model
from bmgkd_core.train.evaluate import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", nargs="+", default=["retinanet_resnet18_fpn"])
    p.add_argument("--image-size", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    names = load_dataset(args.data, "train").label_map.names
    results = {}
    for arch in args.model:
        torch.manual_seed(args.seed)  # the same init `bmgkd train --seed` starts from
        model = build_detector(arch, len(names) + 1, image_size=args.image_size)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt"
            save_model(
                path,
                model,
                arch=arch,
                num_classes=len(names) + 1,
                class_names=names,
                image_size=args.image_size,
            )
            bbox = evaluate(path, data=args.data, device=args.device)["bbox"]
        results[arch] = {k: bbox[k] for k in ("AP", "AP50", "AP75")}
        print(f"{arch}: untrained AP={bbox['AP']:.2f} AP50={bbox['AP50']:.2f}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
