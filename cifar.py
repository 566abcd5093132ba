"""CIFAR-10 for train.py --dataset cifar10: torchvision's on-disk layout, read without a plain
unpickler, the download when asked, and the augmentation of the published CIFAR protocol.

The python version of CIFAR-10 (``cifar-10-batches-py/``, as ``torchvision.datasets.CIFAR10``
keeps it) is five training batches, a test batch and ``batches.meta``, each a pickle. These are
read with ``RestrictedUnpickler``, which builds dicts, lists, strings, numbers and NumPy arrays
and refuses every other global, so a crafted file cannot run code.
"""
import io
import os
import pickle
from typing import List, Tuple

import numpy as np
import torch

FOLDER = 'cifar-10-batches-py'
TRAIN_BATCHES = [f'data_batch_{k}' for k in range(1, 6)]
TEST_BATCH = 'test_batch'
# per-channel mean and std of the CIFAR-10 training images (DARTS utils.py, _data_transforms_cifar10)
MEAN = (0.49139968, 0.48215827, 0.44653124)
STD = (0.24703233, 0.24348505, 0.26158768)
CUTOUT = 16  # DARTS --cutout_length


class CifarError(RuntimeError):
    """A missing or malformed CIFAR-10 copy; the message names the file and the fix."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only (what the CIFAR-10 batches hold)."""

    ALLOWED = {
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('numpy', 'ndarray'), ('numpy', 'dtype'),
        ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
        ('builtins', 'list'), ('builtins', 'dict'), ('builtins', 'bytes'), ('builtins', 'str'),
        ('_codecs', 'encode'), ('copy_reg', '_reconstructor'), ('copyreg', '_reconstructor'),
        ('__builtin__', 'object'), ('builtins', 'object'),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'global {module}.{name} is not allowed')


def restricted_load(data: bytes):
    return RestrictedUnpickler(io.BytesIO(data), encoding='latin1').load()


def _get(d: dict, key: str):
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise KeyError(key)


def read_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of one batch file."""
    try:
        with open(path, 'rb') as f:
            d = restricted_load(f.read())
        data = np.asarray(_get(d, 'data'), dtype=np.uint8)
        labels = np.asarray(_get(d, 'labels'), dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError,
            AttributeError, IndexError) as e:
        raise CifarError(f'{path}: not a CIFAR-10 batch ({type(e).__name__}: {e}); download it '
                         f'again with --download') from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise CifarError(f'{path}: data of shape {list(data.shape)} with {len(labels)} labels, '
                         f'not [N, 3072] with N labels; download it again with --download')
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise CifarError(f'{path}: labels outside 0-9; not a CIFAR-10 batch')
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def class_names(root: str) -> List[str]:
    path = os.path.join(root, FOLDER, 'batches.meta')
    try:
        with open(path, 'rb') as f:
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in _get(restricted_load(f.read()), 'label_names')]
    except (OSError, pickle.UnpicklingError, KeyError, EOFError, TypeError) as e:
        raise CifarError(f'{path}: cannot read the class names ({type(e).__name__}); download '
                         f'CIFAR-10 again with --download') from None
    if len(names) != 10:
        raise CifarError(f'{path}: {len(names)} class names, not CIFAR-10\'s 10')
    return names


def download(root: str) -> None:
    """torchvision's download of the python version, checked against its MD5."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive
    try:
        download_and_extract_archive(CIFAR10.url, root, filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except Exception as e:  # urllib's and torchvision's errors alike: one line for the user
        raise CifarError(f'downloading CIFAR-10 into {root} failed ({type(e).__name__}: {e}); '
                         f'without a network, copy {FOLDER}/ there') from None


def load(root: str, want_download: bool = False):
    """(class names, train images, train labels, test images, test labels) from ``root``."""
    folder = os.path.join(root, FOLDER)
    needed = TRAIN_BATCHES + [TEST_BATCH, 'batches.meta']
    missing = [n for n in needed if not os.path.isfile(os.path.join(folder, n))]
    if missing and want_download:
        download(root)
        missing = [n for n in needed if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise CifarError(f'--data {root}: no CIFAR-10 there ({os.path.join(folder, missing[0])} is '
                         f'missing); pass --download to fetch it (online), or copy {FOLDER}/ into it')
    parts = [read_batch(os.path.join(folder, n)) for n in TRAIN_BATCHES]
    x_test, y_test = read_batch(os.path.join(folder, TEST_BATCH))
    return (class_names(root), np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]), x_test, y_test)


def holdout(n: int, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices of ``n`` training images, ``size`` of them held out. The split is
    a fixed permutation (seed 0, whatever the run's --seed), so every run of a search is
    validated on the same images, none of which it trained on."""
    order = np.random.RandomState(0).permutation(n)
    return np.sort(order[size:]), np.sort(order[:size])


class CifarDataset(torch.utils.data.Dataset):
    """(image, label, index) as train.py's datasets give them; ``train`` adds DARTS's
    augmentation: pad 4 and a random 32x32 crop, a horizontal flip, then the normalisation and
    a 16-pixel cutout."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool, cutout: int = CUTOUT):
        self.images, self.labels, self.train, self.cutout = images, labels, train, cutout
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div_(255)
        if self.train:
            padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
            top, left = (int(v) for v in torch.randint(0, 9, (2,)))
            x = padded[:, top:top + 32, left:left + 32]
            if bool(torch.rand(()) < 0.5):
                x = x.flip(2)
        x = (x - self.mean) / self.std
        if self.train and self.cutout > 0:
            cy, cx = (int(v) for v in torch.randint(0, 32, (2,)))
            h = self.cutout // 2
            x[:, max(cy - h, 0):min(cy + h, 32), max(cx - h, 0):min(cx + h, 32)] = 0.0
        return x.contiguous(), int(self.labels[i]), i
