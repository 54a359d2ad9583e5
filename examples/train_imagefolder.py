"""Train a small CNN on an ImageFolder with FMQLoader, on the CPU.

    python examples/train_imagefolder.py                      # generates data/train_demo first
    python examples/train_imagefolder.py --root ~/images --steps 500 --workers 4

Prints the loss, images/s and the share of loop time spent waiting for data
(near 0%: the loader keeps up; near 100%: the model waits for data), then the
same share as the loader itself measures it, from ``loader.stats()``.
"""

import argparse
import os

import torch

from fmq_loader import FMQLoader, ImageFolder, make_dataset
from fmq_loader import transforms as T
from fmq_loader.demo import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/train_demo", help="ImageFolder root")
    parser.add_argument("--steps", type=int, default=300, help="SGD steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="crop size in pixels")
    args = parser.parse_args()

    if not os.path.isdir(args.root):  # a small synthetic set: 4 classes x 100 images
        print(f"generating a synthetic ImageFolder in {args.root}")
        make_dataset(args.root, classes=4, per_class=100, size=(160, 120), progress=False)

    dataset = ImageFolder(args.root, transform=T.Compose([
        T.RandomResizedCrop(args.size, scale=(0.25, 1.0)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]))
    print(f"{len(dataset)} images, {len(dataset.classes)} classes; "
          f"batch {args.batch_size}, {args.workers} workers, {args.steps} steps")

    torch.set_num_threads(1)  # leave the other cores to the loader's workers
    with FMQLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                   num_workers=args.workers, persistent_workers=args.workers > 0) as loader:
        result = train(loader, num_classes=len(dataset.classes), steps=args.steps,
                       warmup_steps=min(10, args.steps - 1), log_every=50)
        stats = loader.stats()  # counted by the loader itself, warm-up included

    print(f"done: {result.images_per_s:.0f} images/s, "
          f"data wait {100 * result.data_wait_share:.1f}% of loop time, "
          f"loss {result.first_loss:.3f} -> {result.final_loss:.3f}")
    print(f"loader.stats(): data-bound share {stats.data_bound:.1%} "
          f"({stats.wait_s:.2f} s of {stats.elapsed_s:.2f} s waiting in next()); "
          f"workers busy {', '.join(f'{w.busy_share:.0%}' for w in stats.workers) or '-'}")
    if stats.data_bound > 0.5:
        print("-> the model waits for data: more --workers, or a cheaper transform")
    else:
        print("-> the loader keeps up: the model's step is the bottleneck")


if __name__ == "__main__":
    main()
