"""The datasets fmnist_lab knows: names, class names and where their files sit. Light (no
torch), so that commands can name them without loading the data stack."""

from __future__ import annotations

DATA_ENV = "FMNIST_LAB_DATA"

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MNIST_CLASSES = [str(d) for d in range(10)]

# Per IDX dataset: its class names, and the sub-folders of a data directory where its four .gz
# files may sit (the layout of shared/data, and torchvision's own layout).
CLASSES = {"fashion_mnist": FASHION_CLASSES, "mnist": MNIST_CLASSES}
FOLDERS = {"fashion_mnist": ("fashion-mnist", "FashionMNIST/raw"), "mnist": ("mnist", "MNIST/raw")}
PRETTY = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "fashion_mnist_csv": "Fashion-MNIST"}
