"""torch.hub entry points: ``torch.hub.load(REPO_DIR, 'pnasnet5large', source='local', ...)``.

Each takes a local weights file (a ``convert.py`` output, ``.pth`` or ``.safetensors``) or none
(random weights), and passes ``num_classes`` (a fresh classifier when it differs from the
weights'), ``global_pool`` ('avg', or '' with ``num_classes=0`` for the unpooled map) and
``features_only`` / ``out_indices`` (the maps of ``forward_stages``) through; other keyword
arguments are ``PNASNetConfig`` fields. ``PNASNet5_Large_Weights`` / ``PNASNet5_Mobile_Weights``
(from pretrained.py) describe the official weights as torchvision does. docs/interop.md shows
them in use.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

import model
import pretrained as pretrained_mod
from pretrained import PNASNet5_Large_Weights, PNASNet5_Mobile_Weights  # noqa: F401  (re-exported)

dependencies = ['torch']


# --- the feature maps, as timm's features_only models give them --------------------------------------

class FeatureInfo:
    """A network's ``feature_info`` (the maps of ``forward_stages``: ``num_chs``, ``reduction``,
    the stride against the input, and ``module`` of each) with timm's accessors."""

    def __init__(self, info: List[dict]):
        self.info = info

    def _get(self, key: str, idx=None):
        if idx is None:
            return [d[key] for d in self.info]
        return self.info[idx][key] if isinstance(idx, int) else [self.info[i][key] for i in idx]

    def channels(self, idx=None):
        return self._get('num_chs', idx)

    def reduction(self, idx=None):
        return self._get('reduction', idx)

    def module_name(self, idx=None):
        return self._get('module', idx)

    def get_dicts(self) -> List[dict]:
        return [dict(d) for d in self.info]

    def __getitem__(self, idx):
        return self.info[idx]

    def __len__(self) -> int:
        return len(self.info)


class Features(nn.Module):
    """A network whose forward returns the feature maps of ``forward_stages`` (those of
    ``out_indices``; default: all five), as timm's ``features_only`` models do: a backbone for
    detection or segmentation. The network is ``self.net``; ``feature_info`` describes all five
    maps, with timm's accessors."""

    def __init__(self, net: model.NetworkImageNet, out_indices: Optional[Sequence[int]] = None):
        super().__init__()
        n = len(net.feature_info)
        self.out_indices = list(range(n) if out_indices is None else out_indices)
        for i in self.out_indices:
            if not -n <= i < n:
                raise ValueError(f'out_indices: {i} is not one of the {n} feature maps')
        self.net = net
        self.feature_info = FeatureInfo(net.feature_info)
        self.pretrained_cfg = self.default_cfg = net.pretrained_cfg
        self.train(net.training)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.net.forward_stages(x, self.out_indices)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.net.set_grad_checkpointing(enable)


# --- torch.hub ---------------------------------------------------------------------------------------


def _weights_file(preset: str, weights, pretrained: bool = False, source: str = 'tf') -> Optional[str]:
    """The weights file of an entry point's ``weights`` (pretrained.weights_file), the preset's
    DEFAULT weights with ``pretrained=True``."""
    if weights is None and pretrained:
        weights = pretrained_mod.WEIGHTS[preset].DEFAULT
    return pretrained_mod.weights_file(weights, preset, source)


def _build(preset: str, weights, num_classes: Optional[int], features_only: bool,
           out_indices: Optional[Sequence[int]], global_pool: str, pretrained: bool = False,
           source: str = 'tf', **config) -> nn.Module:
    weights = _weights_file(preset, weights, pretrained, source)
    if weights:
        net = model.load_pretrained(weights, **config)
    else:
        if num_classes is not None:
            config['num_classes'] = num_classes
        net = model.NetworkImageNet(getattr(model.PNASNetConfig, preset)(**config),
                                    global_pool=global_pool).eval()
    wanted = net.num_classes if num_classes is None else num_classes
    if wanted != net.num_classes or global_pool != net.global_pool:
        net.reset_classifier(wanted, global_pool)
    return Features(net, out_indices) if features_only else net


def pnasnet5large(weights=None, num_classes: Optional[int] = None, features_only: bool = False,
                  out_indices: Optional[Sequence[int]] = None, global_pool: str = 'avg',
                  pretrained: bool = False, source: str = 'tf', **config) -> nn.Module:
    """PNASNet-5 Large (331 px); ``weights``: a convert.py output, or 'IMAGENET1K_TF' /
    PNASNet5_Large_Weights.IMAGENET1K_TF (or ``pretrained=True``): the official weights, cached;
    ``source='timm'`` takes timm's copy from the Hugging Face Hub (no aux head, 1000 classes)."""
    return _build('large', weights, num_classes, features_only, out_indices, global_pool,
                  pretrained, source, **config)


def pnasnet5mobile(weights=None, num_classes: Optional[int] = None, features_only: bool = False,
                   out_indices: Optional[Sequence[int]] = None, global_pool: str = 'avg',
                   pretrained: bool = False, source: str = 'tf', **config) -> nn.Module:
    """PNASNet-5 Mobile (224 px); ``weights``: a convert.py output, or 'IMAGENET1K_TF' /
    PNASNet5_Mobile_Weights.IMAGENET1K_TF (or ``pretrained=True``): the official weights, cached."""
    return _build('mobile', weights, num_classes, features_only, out_indices, global_pool,
                  pretrained, source, **config)


# --- timm ------------------------------------------------------------------------------------------

TIMM_NAMES = {'pnasnet5large_port': 'large', 'pnasnet5mobile_port': 'mobile'}


def _timm_entrypoint(name: str, preset: str):
    def create(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
               cache_dir=None, num_classes: int = 1001, global_pool: str = 'avg',
               features_only: bool = False, out_indices: Optional[Sequence[int]] = None,
               drop_rate: Optional[float] = None, drop_path_rate: Optional[float] = None,
               device=None, dtype=None, **config) -> nn.Module:
        config.pop('scriptable', None)  # timm's layer switches; this model is scriptable as it is
        config.pop('exportable', None)
        if drop_rate is not None:
            config['dropout'] = drop_rate
        if drop_path_rate is not None:
            config['drop_path_prob'] = drop_path_rate
        if pretrained:  # the official weights, cached (pretrained.cached_weights)
            net = model.load_pretrained(_weights_file(preset, None, True), **config)
            if num_classes != net.num_classes or global_pool != net.global_pool:
                net.reset_classifier(num_classes, global_pool)
        else:
            cfg = getattr(model.PNASNetConfig, preset)(num_classes=num_classes, **config)
            net = model.build_network(cfg, global_pool=global_pool)
        net = Features(net, out_indices) if features_only else net
        return net.to(device=device, dtype=dtype) if device is not None or dtype is not None else net
    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    return create


def register_timm() -> None:
    """Registers PNASNet-5 Large and Mobile of this port in timm's model registry, as
    ``pnasnet5large_port`` and ``pnasnet5mobile_port`` (random weights; timm's own
    ``pnasnet5large`` stays as it is): ``timm.create_model('pnasnet5mobile_port', num_classes=10)``
    then takes timm's arguments (``num_classes``, ``global_pool``, ``features_only``,
    ``out_indices``, ``drop_rate``, ``drop_path_rate``) and PNASNetConfig fields."""
    import sys
    from timm.models import register_model
    module = sys.modules[__name__]
    module.default_cfgs = {name: model.pretrained_cfg(getattr(model.PNASNetConfig, preset)())
                           for name, preset in TIMM_NAMES.items()}
    for name, preset in TIMM_NAMES.items():
        fn = _timm_entrypoint(name, preset)
        setattr(module, name, fn)
        register_model(fn)
