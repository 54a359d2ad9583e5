"""Train the same small CNN from an image folder and from its pack, side by side.

    python examples/train_packed.py                  # generates data/pack_demo, packs it
    python examples/train_packed.py --root ~/images --short-side 160 --steps 600

The pack is what ``fmq-loader pack ROOT ROOT.pack --short-side N`` writes: the images
shrunk once, stored in memory-mapped shards. Both runs use the same transforms, seed and
steps; the loss curves should agree within noise (the pack's images are smaller before
the crop, not different), while the pack feeds the model faster.
"""

import argparse
import os

import torch

from fmq_loader import FMQLoader, ImageFolder, PackedImages, make_dataset
from fmq_loader import transforms as T
from fmq_loader.demo import train
from fmq_loader.pack import PackOptions, pack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/pack_demo", help="ImageFolder root")
    parser.add_argument("--short-side", type=int, default=128, help="pack's short side")
    parser.add_argument("--steps", type=int, default=300, help="SGD steps per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    if not os.path.isdir(args.root):
        print(f"generating a synthetic ImageFolder in {args.root}")
        make_dataset(args.root, classes=4, per_class=100, size=(320, 240), progress=False)
    packed_root = args.root.rstrip("/") + ".pack"
    if not os.path.exists(os.path.join(packed_root, "meta.json")):
        meta = pack(args.root, packed_root, PackOptions(short_side=args.short_side),
                    progress=False, overwrite=True)
        print(f"packed {meta['records']} images into {packed_root} "
              f"({meta['stats']['seconds']:.1f} s)")

    transform = T.Compose([T.RandomResizedCrop(64, scale=(0.25, 1.0)), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize([0.485, 0.456, 0.406],
                                                     [0.229, 0.224, 0.225])])
    torch.set_num_threads(1)  # leave the other cores to the loader's workers
    curves, results = {}, {}
    for name, dataset in (("folder", ImageFolder(args.root, transform=transform)),
                          ("pack", PackedImages(packed_root, transform=transform))):
        losses = []
        with FMQLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                       num_workers=args.workers, persistent_workers=args.workers > 0,
                       seed=0) as loader:
            results[name] = train(loader, num_classes=len(dataset.classes), steps=args.steps,
                                  warmup_steps=min(10, args.steps - 1), log_every=50,
                                  log=losses.append)
        curves[name] = [line.split("loss")[1].split()[0] for line in losses
                        if line.startswith("step")]
    print("loss every 50 steps   folder: " + " ".join(curves["folder"]))
    print("                        pack: " + " ".join(curves["pack"]))
    for name, r in results.items():
        print(f"{name:>6}: {r.images_per_s:.0f} images/s, data wait "
              f"{100 * r.data_wait_share:.1f}% of loop time, loss {r.first_loss:.3f} -> "
              f"{r.final_loss:.3f}")


if __name__ == "__main__":
    main()
