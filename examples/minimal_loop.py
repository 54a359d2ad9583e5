"""The smallest FMQLoader loop: wrap a dataset, iterate batches, close on exit."""

from fmq_loader import FMQLoader, ImageFolder, make_dataset
from fmq_loader import transforms as T

if __name__ == "__main__":  # needed for the spawn/forkserver start methods
    root = make_dataset("data/minimal", classes=2, per_class=32, size=(96, 72), progress=False)
    dataset = ImageFolder(root, transform=T.Compose([T.Resize(64), T.CenterCrop(64),
                                                     T.ToTensor()]))
    with FMQLoader(dataset, batch_size=16, shuffle=True, num_workers=2) as loader:
        for epoch in range(2):
            for images, labels in loader:
                print(epoch, tuple(images.shape), labels.tolist())
