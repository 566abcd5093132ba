"""The official weights as torchvision describes weights: ``PNASNet5_Large_Weights.IMAGENET1K_TF``
and ``PNASNet5_Mobile_Weights.IMAGENET1K_TF``, each with where the TF-Slim release comes from
(``url``; ``PNASNET_LARGE_URL`` / ``PNASNET_MOBILE_URL`` name a mirror), what it is (``meta``: the
published accuracy, size, cost and the 1001 categories) and its preprocessing (``transforms()``:
TF-Slim's evaluation preprocessing as a transform, the exact tensor ``main.py`` feeds the network).

    from hubconf import PNASNet5_Large_Weights
    weights = PNASNet5_Large_Weights.IMAGENET1K_TF
    x = weights.transforms()(PIL.Image.open('cat.jpg'))    # [3, 331, 331], as main.py has it
    weights.meta['categories'][logits.argmax()]             # 'background' at 0, then ImageNet's

More: docs/interop.md
"""
import enum
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

import utils

OFFICIAL_URLS = {
    'large': 'http://download.tensorflow.org/models/pnasnet-5_large_2017_12_13.tar.gz',
    'mobile': 'http://download.tensorflow.org/models/pnasnet-5_mobile_2017_12_13.tar.gz',
}
URL_VARIABLES = {'large': 'PNASNET_LARGE_URL', 'mobile': 'PNASNET_MOBILE_URL'}


class TFSlimEval:
    """TF-Slim's inception ``preprocess_for_eval`` as a transform: a PIL image (any mode; taken
    as RGB as torchvision's ImageFolder takes it) or a uint8 tensor [C, H, W] (torchvision's
    layout; one channel is grey, a fourth is dropped) in, float32 [3, size, size] in [-1, 1] out,
    bit for bit ``utils.preprocess_for_eval``: central crop 0.875, TF's legacy bilinear resize."""

    def __init__(self, size: int, central_fraction: float = 0.875):
        self.size, self.central_fraction = size, central_fraction

    def __call__(self, image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3, 4):
                raise ValueError(f'expected a uint8 image tensor [C, H, W] with 1, 3 or 4 channels, '
                                 f'got {image.dtype} {list(image.shape)}')
            pixels = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
            pixels = pixels.permute(1, 2, 0).cpu().numpy()
        else:
            pixels = np.asarray(image.convert('RGB'), dtype=np.uint8)
        x = utils.preprocess_for_eval(np.ascontiguousarray(pixels), self.size, self.size,
                                      central_fraction=self.central_fraction)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(size={self.size}, central_fraction={self.central_fraction}, '
                f'resize=TF legacy bilinear, range=[-1, 1])')


def categories():
    """The 1001 output classes: 'background' at logit 0, then ImageNet's in wnid order."""
    return ['background'] + [name for _, name in utils.read_class_names()]


@dataclass(frozen=True)
class Weights:
    """One set of weights, as torchvision's ``Weights``: its source, transform and meta."""
    preset: str
    transforms: Callable[[], TFSlimEval]
    meta: dict = field(compare=False)

    @property
    def url(self) -> str:
        """The TF-Slim archive: ``PNASNET_LARGE_URL`` / ``PNASNET_MOBILE_URL`` where set (a lab's
        mirror, ``http(s)://`` or ``file://``), else the official one."""
        return os.environ.get(URL_VARIABLES[self.preset]) or OFFICIAL_URLS[self.preset]


def _meta(size: int, params: int, mult_adds: float, top1: float, top5: float) -> dict:
    return {'num_params': params, 'min_size': (size, size), 'input_size': (3, size, size),
            'num_classes': 1001, 'label_offset': 1, 'categories': None,
            '_metrics': {'ImageNet-1K': {'acc@1': top1, 'acc@5': top5}},
            '_ops': mult_adds, '_ops_unit': 'G multiply-adds per image',
            'source': 'TF-Slim (tensorflow/models research/slim), converted and checked by convert.py',
            '_docs': 'Published ImageNet accuracy at the input size, single crop, with TF-Slim\'s '
                     'evaluation preprocessing (transforms()); num_params excludes the aux head.'}


class _WeightsEnum(enum.Enum):
    """torchvision's WeightsEnum convention: ``E.IMAGENET1K_TF.url / .transforms() / .meta``,
    ``E.DEFAULT``, and ``E.verify('IMAGENET1K_TF')`` for a name or member."""

    @classmethod
    def verify(cls, value):
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            name = value.split('.')[-1]
            if name in cls.__members__:
                return cls.__members__[name]
        raise ValueError(f'{value!r} is not one of {cls.__name__}: '
                         f'{", ".join(cls.__members__)}')

    @property
    def url(self) -> str:
        return self.value.url

    @property
    def transforms(self) -> Callable[[], TFSlimEval]:
        return self.value.transforms

    @property
    def meta(self) -> dict:
        meta = dict(self.value.meta)
        meta['categories'] = categories()
        return meta


class PNASNet5_Large_Weights(_WeightsEnum):
    IMAGENET1K_TF = Weights('large', lambda: TFSlimEval(331), _meta(331, 86_061_989, 25.0, 82.9, 96.2))
    DEFAULT = IMAGENET1K_TF


class PNASNet5_Mobile_Weights(_WeightsEnum):
    IMAGENET1K_TF = Weights('mobile', lambda: TFSlimEval(224), _meta(224, 5_066_202, 0.588, 74.2, 91.9))
    DEFAULT = IMAGENET1K_TF
