"""torch.hub entry points: ``torch.hub.load(REPO_DIR, 'pnasnet5large', source='local', ...)``.

Each takes a local weights file (a ``convert.py`` output, ``.pth`` or ``.safetensors``) or none
(random weights), and passes ``num_classes`` (a fresh classifier when it differs from the
weights') and ``features_only`` / ``out_indices`` (the maps of ``forward_stages``) through; other
keyword arguments are ``PNASNetConfig`` fields.
"""
from typing import Optional, Sequence

import model

dependencies = ['torch']


def _build(preset: str, weights: Optional[str], num_classes: Optional[int], features_only: bool,
           out_indices: Optional[Sequence[int]], **config) -> model.NetworkImageNet:
    if weights:
        net = model.load_pretrained(weights, **config)
    else:
        if num_classes is not None:
            config['num_classes'] = num_classes
        net = model.NetworkImageNet(getattr(model.PNASNetConfig, preset)(**config)).eval()
    if num_classes is not None and num_classes != net.config.num_classes:
        net.reset_classifier(num_classes)
    if features_only:
        return model.NetworkImageNet.as_features(net, out_indices)
    return net


def pnasnet5large(weights: Optional[str] = None, num_classes: Optional[int] = None,
                  features_only: bool = False, out_indices: Optional[Sequence[int]] = None,
                  **config) -> model.NetworkImageNet:
    """PNASNet-5 Large (331 px); ``weights``: a convert.py output of the official checkpoint."""
    return _build('large', weights, num_classes, features_only, out_indices, **config)


def pnasnet5mobile(weights: Optional[str] = None, num_classes: Optional[int] = None,
                   features_only: bool = False, out_indices: Optional[Sequence[int]] = None,
                   **config) -> model.NetworkImageNet:
    """PNASNet-5 Mobile (224 px); ``weights``: a convert.py output of the official checkpoint."""
    return _build('mobile', weights, num_classes, features_only, out_indices, **config)
