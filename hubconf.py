"""torch.hub entry points: ``torch.hub.load(REPO_DIR, 'pnasnet5large', source='local', ...)``.

Each takes a local weights file (a ``convert.py`` output, ``.pth`` or ``.safetensors``) or none
(random weights), and passes ``num_classes`` (a fresh classifier when it differs from the
weights'), ``global_pool`` ('avg', or '' with ``num_classes=0`` for the unpooled map) and
``features_only`` / ``out_indices`` (the maps of ``forward_stages``) through; other keyword
arguments are ``PNASNetConfig`` fields. docs/interop.md shows them in use.
"""
from typing import Optional, Sequence

import model

dependencies = ['torch']


def _build(preset: str, weights: Optional[str], num_classes: Optional[int], features_only: bool,
           out_indices: Optional[Sequence[int]], global_pool: str, **config) -> model.NetworkImageNet:
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
    if features_only:
        return model.NetworkImageNet.as_features(net, out_indices)
    return net


def pnasnet5large(weights: Optional[str] = None, num_classes: Optional[int] = None,
                  features_only: bool = False, out_indices: Optional[Sequence[int]] = None,
                  global_pool: str = 'avg', **config) -> model.NetworkImageNet:
    """PNASNet-5 Large (331 px); ``weights``: a convert.py output of the official checkpoint."""
    return _build('large', weights, num_classes, features_only, out_indices, global_pool, **config)


def pnasnet5mobile(weights: Optional[str] = None, num_classes: Optional[int] = None,
                  features_only: bool = False, out_indices: Optional[Sequence[int]] = None,
                  global_pool: str = 'avg', **config) -> model.NetworkImageNet:
    """PNASNet-5 Mobile (224 px); ``weights``: a convert.py output of the official checkpoint."""
    return _build('mobile', weights, num_classes, features_only, out_indices, global_pool, **config)


# --- timm ------------------------------------------------------------------------------------------

TIMM_NAMES = {'pnasnet5large_port': 'large', 'pnasnet5mobile_port': 'mobile'}


def _timm_entrypoint(name: str, preset: str):
    def create(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
               cache_dir=None, num_classes: int = 1001, global_pool: str = 'avg',
               features_only: bool = False, out_indices: Optional[Sequence[int]] = None,
               drop_rate: Optional[float] = None, drop_path_rate: Optional[float] = None,
               device=None, dtype=None, **config) -> model.NetworkImageNet:
        if pretrained:
            raise ValueError(f'{name}: timm fetches no weights for this port; convert the official '
                             f'checkpoint with convert.py and load it with model.load_pretrained')
        config.pop('scriptable', None)  # timm's layer switches; this model is scriptable as it is
        config.pop('exportable', None)
        if drop_rate is not None:
            config['dropout'] = drop_rate
        if drop_path_rate is not None:
            config['drop_path_prob'] = drop_path_rate
        cfg = getattr(model.PNASNetConfig, preset)(num_classes=num_classes, **config)
        net = model.build_network(cfg, features_only=features_only, out_indices=out_indices,
                                  global_pool=global_pool)
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
