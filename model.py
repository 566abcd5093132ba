"""PNASNet-5 (Liu et al., ECCV 2018) as a genotype-driven, DARTS-style ``NetworkImageNet``.

The network follows TF-Slim's ``pnasnet.py`` exactly: a VALID 3x3 stem conv, two stride-2 stem
cells, ``num_cells`` cells with reductions at ``int(k/3 * num_cells)``, ReLU + global mean +
dropout + FC. Every cell is built from a genotype in ``genotypes.py``. The fast inference path is
``engine.InferenceModel``, which reads this network and is not part of it.

Expected input (as TF-Slim's inception preprocessing gives it, see ``utils.preprocess_for_eval``):
RGB, NCHW float32 in [-1, 1], central crop 0.875, bilinear resize to 331 (Large) or 224 (Mobile).
The 1001 logits put the background class at index 0; ImageNet class k is logit k + 1.
"""
import dataclasses
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

import genotypes as genotypes_mod
from operations import (OPS, PADDING_MODES, Conv2dSame, FactorizedReduce, ReLUConvBN, SkipConnect,
                        batch_norm, drop_path)


MIN_IMAGE_SIZE = 3  # conv0 is a VALID 3x3 conv: a smaller input leaves it nothing


@dataclass
class PNASNetConfig:
    """Every architectural number of the network; ``large()`` and ``mobile()`` are the presets."""
    stem_multiplier: float = 3.0     # conv0 has int(32 * stem_multiplier) filters
    num_conv_filters: int = 216      # F: filters of the first normal cell
    num_cells: int = 12              # cells after the two stem cells
    num_classes: int = 1001          # index 0 is the background class
    genotype: Union[str, dict] = 'PNASNet'   # a name in genotypes.GENOTYPES, or genotypes.to_dict(g)
    auxiliary: bool = False          # build the auxiliary head (training only)
    image_size: int = 331            # sets the aux head's kernel, as TF-Slim does
    drop_path_prob: float = 0.0      # initial model.drop_path_prob; TF-Slim trained with 0.4 (Large)
    dropout: float = 0.5             # before the classifier (TF: dense_dropout_keep_prob 0.5)
    padding: str = 'tf'              # 'tf' (exact 'SAME') or 'symmetric' (the earlier port)
    num_reduction_layers: int = 2
    filter_scaling_rate: float = 2.0
    stem: str = 'imagenet'           # 'imagenet': conv0 3x3/2 VALID + two stem cells (pnasnet.py);
                                     # 'cifar': a 3x3 SAME conv of F * stem_multiplier, no stem
                                     # cells (nasnet.py's _cifar_stem); NetworkCIFAR builds it

    @classmethod
    def large(cls, **overrides) -> 'PNASNetConfig':
        return cls(**overrides)

    @classmethod
    def cifar(cls, **overrides) -> 'PNASNetConfig':
        """PNASNet-5 on CIFAR-10 as the paper's Table 1 has it: N = 3 and F = 48, laid out as
        TF-Slim's cifar_config (stem multiplier 3, aux head on the last cell before the second
        reduction, no dropout before the classifier). N counts cells as pnasnet.py does, where
        num_cells = 3N holds the two reduction cells (Mobile, N = 3, has 9): cells 3 and 6 reduce,
        and the network has 3.19 M parameters without the aux head, the paper's 3.2 M."""
        values = dict(stem='cifar', stem_multiplier=3.0, num_conv_filters=48, num_cells=9,
                      num_classes=10, image_size=32, dropout=0.0)
        values.update(overrides)
        return cls(**values)

    @property
    def num_stem_cells(self) -> int:
        return 0 if self.stem == 'cifar' else 2

    @property
    def stem_filters(self) -> int:
        base = self.num_conv_filters if self.stem == 'cifar' else 32
        return int(base * self.stem_multiplier)

    @classmethod
    def mobile(cls, **overrides) -> 'PNASNetConfig':
        values = dict(stem_multiplier=1.0, num_conv_filters=54, num_cells=9, image_size=224)
        values.update(overrides)
        return cls(**values)

    @property
    def reduction_indices(self) -> List[int]:
        n, r = self.num_cells, self.num_reduction_layers
        return [int(k / (r + 1) * n) for k in range(1, r + 1)]

    @property
    def aux_cell_index(self) -> Optional[int]:
        red = self.reduction_indices
        return red[1] - 1 if len(red) >= 2 else None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not isinstance(self.genotype, str):
            d['genotype'] = genotypes_mod.to_dict(genotypes_mod.get(self.genotype))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'PNASNetConfig':
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f'unknown config keys {unknown}; known: {sorted(names)}')
        return cls(**d)


def spatial_sizes(config: PNASNetConfig, image_size: int) -> List[int]:
    """Output size of conv0 and of every cell (stem cells first) for a square input."""
    n = image_size if config.stem == 'cifar' else (image_size - 3) // 2 + 1  # SAME / VALID
    sizes = [n]
    strides = [2] * config.num_stem_cells + [2 if i in config.reduction_indices else 1
                                             for i in range(config.num_cells)]
    for s in strides:
        n = -(-n // s)
        sizes.append(n)
    return sizes


def aux_kernel_size(config: PNASNetConfig, image_size: int) -> int:
    """The aux head's last kernel at this input size: what TF-Slim's 5x5, stride-3 VALID pool
    leaves of its cell's output (6 for Large at 331 px, 4 for Mobile at 224). Below 1 the aux head
    does not fit the input."""
    return (spatial_sizes(config, image_size)[1 + config.num_stem_cells + config.aux_cell_index] - 5) // 3 + 1


class Cell(nn.Module):
    """A PNAS cell (TF-Slim NasNetABaseCell) built from one half of a genotype.

    ``s0`` is the output of the cell two back, ``s1`` the previous one (DARTS numbering). As in
    TF-Slim, ``s0`` is halved by a factorized reduction when it is larger than ``s1``, projected
    by ReLU-1x1-BN when only its width differs, and left as it is otherwise; ``s0 is None`` (the
    first stem cell) means "use ``s1`` itself, untransformed". ``s1`` always goes through
    ReLU-1x1-BN.
    """

    def __init__(self, genotype, C_prev_prev: Optional[int], C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, padding: str = 'tf', drop_scale: float = 1.0):
        super().__init__()
        self.reduction = reduction
        self.C = C
        self.drop_scale = drop_scale  # TF-Slim scales the drop rate by (cell_num + 1) / total cells
        if C_prev_prev is None:
            self.preprocess0 = None
            C0 = C_prev
        elif reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
            C0 = self.preprocess0.C_out
        elif C_prev_prev != C:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1)
            C0 = C
        else:
            self.preprocess0 = nn.Identity()
            C0 = C
        self.preprocess1 = ReLUConvBN(C_prev, C, 1)

        ops = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self._steps = len(ops) // 2
        self._concat = list(concat)
        self.multiplier = len(self._concat)
        self._indices = [index for _, index in ops]
        self._dropped = [name != 'skip_connect' for name, _ in ops]  # TF-Slim keeps the identity whole
        self._ops = nn.ModuleList()
        for name, index in ops:
            stride = 2 if reduction and index < 2 else 1
            C_in = C0 if index == 0 else C
            self._ops.append(OPS[name](C_in, C, stride, padding))

    def forward(self, s0: Optional[torch.Tensor], s1: torch.Tensor,
                drop_prob: float = 0.0) -> torch.Tensor:
        if self.preprocess0 is None or s0 is None:
            x0 = s1  # the first stem cell reads the stem conv twice, untransformed once
        else:
            x0 = self.preprocess0(s0)
        states = [x0, self.preprocess1(s1)]
        hidden: List[torch.Tensor] = []
        for i, op in enumerate(self._ops):
            h = op(states[self._indices[i]])
            if self.training and drop_prob > 0.0 and self._dropped[i]:
                h = drop_path(h, drop_prob * self.drop_scale)
            hidden.append(h)
            if len(hidden) == 2:  # a combination: the sum of its two ops
                states.append(hidden[0] + hidden[1])
                hidden = []
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHead(nn.Module):
    """TF-Slim's aux head: avg pool 5x5/3 VALID, 1x1 conv 128, BN, ReLU, conv 768 with a kernel
    covering what is left (6x6 at 331 px, 4x4 at 224), BN, ReLU, FC. Reads ReLU(cell output)."""

    def __init__(self, C: int, num_classes: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.relu0 = nn.ReLU(inplace=False)
        self.pool = nn.AvgPool2d(5, stride=3, padding=0)
        self.proj = Conv2dSame(C, 128, 1)  # 1x1: no padding
        self.bn0 = batch_norm(128)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv = nn.Conv2d(128, 768, kernel_size, bias=False)
        self.bn1 = batch_norm(768)
        self.relu2 = nn.ReLU(inplace=False)
        self.classifier = nn.Linear(768, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn0(self.proj(self.pool(self.relu0(x)))))
        x = self.relu2(self.bn1(self.conv(_aux_map_checked(x, self.kernel_size))))
        return self.classifier(x.flatten(1))


def _aux_map_checked(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``x``, where it is the map the aux head's last conv was built for; one clear error else."""
    if x.shape[-2] != kernel_size or x.shape[-1] != kernel_size:
        raise ValueError(
            f'the auxiliary head was built for a {kernel_size}x{kernel_size} map (config.image_size) '
            f'but got {x.shape[-2]}x{x.shape[-1]}; build the model with the image_size you train '
            f'at, or with auxiliary=False')
    return x


torch.fx.wrap('_aux_map_checked')  # reads the traced shape: recorded whole in a torch.fx graph


class FeatureInfo:
    """The feature maps of ``forward_stages``, in timm's form: ``num_chs``, ``reduction`` (the
    stride against the input) and ``module`` of each, with timm's accessors."""

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


class NetworkImageNet(nn.Module):
    """PNASNet-5 and its relatives for ImageNet; ``forward`` returns the logits, and
    ``(logits, logits_aux)`` in training mode with the aux head.

    ``features_only`` (as timm's ``create_model`` has it): ``forward`` returns the feature maps
    of ``forward_stages`` instead, those of ``out_indices`` (default: all five).
    ``global_pool``: 'avg' (TF-Slim's global mean), or '' for the unpooled map, which needs
    ``config.num_classes == 0`` (no classifier), as timm has it."""

    def __init__(self, config: Optional[PNASNetConfig] = None, features_only: bool = False,
                 out_indices: Optional[Sequence[int]] = None, global_pool: str = 'avg'):
        super().__init__()
        config = config or PNASNetConfig()
        _check_global_pool(global_pool, config.num_classes)
        if config.padding not in PADDING_MODES:
            raise ValueError(f'config.padding must be one of {PADDING_MODES}, got {config.padding!r}')
        if config.stem not in ('imagenet', 'cifar'):
            raise ValueError(f"config.stem must be 'imagenet' or 'cifar', got {config.stem!r}")
        self.config = config
        genotype = genotypes_mod.get(config.genotype)
        self.genotype = genotype
        self.drop_path_prob = config.drop_path_prob

        C_stem = config.stem_filters
        stem_cells = config.num_stem_cells
        if config.stem == 'cifar':  # TF-Slim's l1_stem_3x3: stride 1, SAME
            self.conv0 = nn.Conv2d(3, C_stem, 3, stride=1, padding=1, bias=False)
        else:
            self.conv0 = nn.Conv2d(3, C_stem, 3, stride=2, padding=0, bias=False)  # VALID
        self.conv0_bn = batch_norm(C_stem)

        total_cells = config.num_cells + stem_cells
        rate = config.filter_scaling_rate
        specs = [(1.0 / rate ** 2, True), (1.0 / rate, True)][:stem_cells]  # the stem cells
        scaling = 1.0
        for i in range(config.num_cells):
            is_reduction = i in config.reduction_indices
            if is_reduction:
                scaling *= rate
            specs.append((scaling, is_reduction))

        self.cells = nn.ModuleList()
        C_prev_prev, C_prev, reduction_prev = None, C_stem, False
        for k, (scale, reduction) in enumerate(specs):
            C = int(config.num_conv_filters * scale)
            # cell_stem_1 reads conv0 (twice its size): it too reduces its s0
            cell = Cell(genotype, C_prev_prev, C_prev, C, reduction,
                        reduction_prev or (k == 1 and stem_cells == 2), config.padding,
                        (k + 1) / total_cells)
            self.cells.append(cell)
            C_prev_prev, C_prev, reduction_prev = C_prev, cell.multiplier * C, reduction
        self.num_features = self.head_hidden_size = C_prev
        self.in_chans = 3  # timm reads the input channels here
        self.num_classes = config.num_classes
        self.global_pool = global_pool
        # multi-scale taps, where timm hooks its pnasnet5large: conv0 (BN output, stride 2),
        # then ReLU of the last cell at each stride (4, 8, 16, 32)
        stride = 1 if config.stem == 'cifar' else 2
        taps = [(0, C_stem, stride, 'conv0_bn')]
        for k, cell in enumerate(self.cells):
            stride *= 2 if cell.reduction else 1
            last_at_stride = k + 1 == len(self.cells) or self.cells[k + 1].reduction
            if last_at_stride:
                taps.append((k + 1, cell.multiplier * cell.C, stride, f'cells.{k}'))
        self._taps = [layer for layer, _, _, _ in taps]
        self.feature_info = FeatureInfo([{'num_chs': c, 'reduction': r, 'module': m}
                                         for _, c, r, m in taps])
        self.grad_checkpointing = False  # set_grad_checkpointing: recompute each cell in backward
        self.class_names: Optional[List[str]] = None  # set by load_pretrained from a train.py output
        self.features_only = features_only
        self.out_indices = list(range(len(taps)) if out_indices is None else out_indices)
        for i in self.out_indices:
            if not -len(taps) <= i < len(taps):
                raise ValueError(f'out_indices: {i} is not one of the {len(taps)} feature maps')

        self.aux_index = -1  # position in self.cells of the cell the aux head reads; -1: none
        self.auxiliary_head = None
        if config.auxiliary and config.aux_cell_index is not None:
            self.aux_index = config.aux_cell_index + stem_cells
            kernel = aux_kernel_size(config, config.image_size)
            if kernel < 1:
                raise ValueError(f'image_size {config.image_size} is too small for the auxiliary head')
            aux_C = self.cells[self.aux_index].multiplier * int(
                config.num_conv_filters * specs[self.aux_index][0])
            self.auxiliary_head = AuxiliaryHead(aux_C, config.num_classes, kernel)

        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.num_features, config.num_classes) if config.num_classes else nn.Identity()
        self.pretrained_cfg = self.default_cfg = pretrained_cfg(config)

    def _forward(self, x: torch.Tensor, stop: int, taps: List[int],
                 with_aux: bool) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        """The stem and the first ``stop`` cells: the maps at ``taps`` (0: the stem's BN output,
        k + 1: ReLU of cell k's output) and, in training with ``with_aux``, the aux logits."""
        s1 = self.conv0_bn(self.conv0(x))
        maps: List[torch.Tensor] = []
        if 0 in taps:
            maps.append(s1)
        s0: Optional[torch.Tensor] = None
        logits_aux: Optional[torch.Tensor] = None
        drop_prob = self.drop_path_prob if self.training else 0.0
        for k, cell in enumerate(self.cells):
            if k < stop:
                if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                    # the RNG state is kept, so drop path draws the same masks again
                    out = torch.utils.checkpoint.checkpoint(cell, s0, s1, drop_prob, use_reentrant=False)
                else:
                    out = cell(s0, s1, drop_prob)
                s0, s1 = s1, out
                if k + 1 in taps:
                    maps.append(F.relu(out))
                if self.auxiliary_head is not None:
                    if with_aux and self.training and k == self.aux_index:
                        logits_aux = self.auxiliary_head(out)
        return maps, logits_aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last cell's output after the final ReLU: [N, num_features, h, w]. Never runs the
        aux head, in training mode neither: only ``forward`` does."""
        n = len(self.cells)
        return self._forward(x, n, [n], False)[0][0]

    @staticmethod
    def as_features(net: 'NetworkImageNet', out_indices: Optional[Sequence[int]] = None
                    ) -> 'NetworkImageNet':
        """A network with ``net``'s config and weights whose forward returns the maps of
        ``forward_stages`` (``features_only``); for a network that was built or loaded whole."""
        features = build_network(net.config, features_only=True, out_indices=out_indices)
        features.load_state_dict(net.state_dict())
        return features.to(next(net.parameters()).device).train(net.training)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New, freshly initialised classifiers (and aux classifier) for ``num_classes``, as
        timm's models have it (0: none, the pooled features come out); ``global_pool`` '' (with
        ``num_classes`` 0): the unpooled map comes out. The body is kept."""
        pool = self.global_pool if global_pool is None else global_pool
        _check_global_pool(pool, num_classes)

        def head(in_features: int, like: nn.Module) -> nn.Module:
            if num_classes == 0:  # timm's convention: the model then returns the features
                return nn.Identity()
            param = next(like.parameters(), None)
            linear = nn.Linear(in_features, num_classes)
            return linear if param is None else linear.to(param)
        self.global_pool = pool
        self.num_classes = num_classes
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
        self.classifier = head(self.num_features, self.classifier)
        if self.auxiliary_head is not None:
            self.auxiliary_head.classifier = head(768, self.auxiliary_head.classifier)

    def forward_stages(self, x: torch.Tensor, out_indices: Optional[List[int]] = None
                       ) -> List[torch.Tensor]:
        """The feature maps at strides 2, 4, 8, 16 and 32 (``feature_info``), or those of
        ``out_indices``; the last one equals ``forward_features(x)``. Cells after the last map
        asked for are not run."""
        n = len(self._taps)
        asked = list(range(n)) if out_indices is None else [i % n for i in out_indices]
        layers: List[int] = []
        for i in range(n):
            if i in asked:
                layers.append(self._taps[i])
        return self._forward(x, max(layers), layers, False)[0]

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-pool vector [N, num_features] (TF-Hub's feature_vector: 4320 Large, 1080 Mobile)."""
        return self.forward_features(x).mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits from ``forward_features`` output (pooled first, unless ``global_pool`` is '')
        or from ``extract_features`` output, as timm's models have it; ``pre_logits``: the
        pooled features, after dropout."""
        if self.global_pool == 'avg':
            features = _global_mean(features)
        features = self.dropout(features)
        return features if pre_logits else self.classifier(features)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each cell in the backward pass instead of keeping its activations (training
        memory for compute, as timm's models have it)."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], List[torch.Tensor]]:
        """The logits [N, num_classes], as timm's and torchvision's models return them; in
        training mode with the aux head, ``(logits, logits_aux)`` (torchvision's inception
        convention); with ``features_only``, the maps of ``forward_stages``."""
        if self.features_only:
            return self.forward_stages(x, self.out_indices)
        n = len(self.cells)
        maps, logits_aux = self._forward(x, n, [n], True)
        logits = self.forward_head(maps[0])
        if logits_aux is not None:
            return logits, logits_aux
        return logits


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    """The global mean of a map [N, C, H, W]; a pooled [N, C] passes as it is."""
    return x.mean(dim=(2, 3)) if x.dim() == 4 else x


torch.fx.wrap('_global_mean')  # branches on the traced rank: recorded whole in a torch.fx graph


def _check_global_pool(global_pool: str, num_classes: int) -> None:
    if global_pool not in ('avg', ''):
        raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
    if global_pool == '' and num_classes:
        raise ValueError("global_pool='' (the unpooled map) needs num_classes=0: there is no "
                         "classifier for a map")


def pretrained_cfg(config: PNASNetConfig) -> dict:
    """What the weights expect, in timm's form: TF-Slim's inception preprocessing (central crop
    0.875, bilinear, [-1, 1]), the background class at logit 0 when there are 1001."""
    size = config.image_size
    pool = spatial_sizes(config, size)[-1]
    return {'input_size': (3, size, size), 'pool_size': (pool, pool), 'crop_pct': 0.875,
            'interpolation': 'bilinear', 'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5),
            'num_classes': config.num_classes, 'first_conv': 'conv0',
            'classifier': 'classifier', 'label_offset': 1 if config.num_classes == 1001 else 0,
            'fixed_input_size': False}


class NetworkCIFAR(NetworkImageNet):
    """A genotype's network in TF-Slim's CIFAR layout (nasnet.py's ``_cifar_stem``): a 3x3 stem
    conv of ``stem_multiplier * F`` filters with BN and no stem cells, then the cells, with
    reductions between the stacks, the aux head as TF-Slim places it, final ReLU, global pool,
    dropout and FC. Default config: ``PNASNetConfig.cifar()`` (PNASNet-5, N = 3, F = 48). All of
    NetworkImageNet's interface applies."""

    def __init__(self, config: Optional[PNASNetConfig] = None, features_only: bool = False,
                 out_indices: Optional[Sequence[int]] = None, global_pool: str = 'avg'):
        config = config or PNASNetConfig.cifar()
        if config.stem != 'cifar':
            config = dataclasses.replace(config, stem='cifar')
        super().__init__(config, features_only, out_indices, global_pool)


def build_network(config: PNASNetConfig, **kwargs) -> NetworkImageNet:
    """The network class that ``config.stem`` asks for: NetworkCIFAR or NetworkImageNet."""
    return (NetworkCIFAR if config.stem == 'cifar' else NetworkImageNet)(config, **kwargs)


def cell_scopes(net: NetworkImageNet) -> List[str]:
    """TF-Slim's scope of each of ``net.cells``: cell_stem_0, cell_stem_1, cell_0, ..."""
    stem = net.config.num_stem_cells
    return [f'cell_stem_{k}' if k < stem else f'cell_{k - stem}' for k in range(len(net.cells))]


def pnasnet5large(**overrides) -> NetworkImageNet:
    """PNASNet-5 Large (331 px, 86.1 M parameters without the aux head), random weights."""
    return NetworkImageNet(PNASNetConfig.large(**overrides))


def pnasnet5mobile(**overrides) -> NetworkImageNet:
    """PNASNet-5 Mobile (224 px, 5.1 M parameters without the aux head), random weights."""
    return NetworkImageNet(PNASNetConfig.mobile(**overrides))


class CheckpointError(RuntimeError):
    """A weights file that cannot be loaded; the message names the file and what to do."""


def _is_aux_key(key: str) -> bool:
    return key.startswith('auxiliary_head.')


def _load_error_summary(e: Exception) -> str:
    """One line for why ``torch.load(weights_only=True)`` failed, without PyTorch's advice to
    retry with ``weights_only=False``: a convert.py output never needs it."""
    text = str(e).strip()
    marker = 'WeightsUnpickler error:'
    if marker in text:
        detail = text.split(marker, 1)[1].strip().splitlines()
        detail = detail[0].strip() if detail else ''
        return ('damaged, or pickles objects other than tensors and plain containers'
                + (f': {detail}' if detail else ''))
    if not text:
        return 'empty or cut short' if isinstance(e, EOFError) else type(e).__name__
    return text.splitlines()[0].split('. ')[0].rstrip('.')


def _read_safetensors(path: str, map_location) -> dict:
    """A convert.py ``.safetensors`` output as ``{'config', 'state_dict'}``: the tensors, and the
    config from the file's metadata. Reading one runs no code, whatever the file holds."""
    import json
    try:
        from safetensors import safe_open
        device = str(map_location) if isinstance(map_location, (str, torch.device)) else 'cpu'
        with safe_open(path, framework='pt', device=device) as f:
            metadata = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(metadata['config'])
    except ImportError:
        raise CheckpointError(f'{path}: reading .safetensors needs the safetensors package '
                              f'(pip install -r requirements.txt)') from None
    except KeyError:
        raise CheckpointError(f'{path}: a safetensors file without this port\'s config in its '
                              f'metadata; write it with convert.py --output FILE.safetensors') from None
    except Exception as e:  # safetensors raises its own error types for damaged files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f'{path}: not a safetensors file this port can read ({first}); '
                              f'convert the TF checkpoint again with convert.py') from None
    return {'config': config, 'state_dict': state_dict}


def read_weights(path: str, map_location='cpu') -> dict:
    """A ``convert.py`` or ``train.py`` output as ``{'config': PNASNetConfig, 'state_dict': ...,
    'class_names': list or None, 'source': dict}``, without building the network.

    A ``.pth`` is read with ``torch.load(weights_only=True)``, a ``.safetensors`` with the config
    in its metadata; a bare state dict of this model is taken as PNASNet-5 Large."""
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: no such weights file; run `python convert.py` first '
                              f'(see README.md)')
    if path.endswith('.safetensors'):
        obj = _read_safetensors(path, map_location)
    else:
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # pickle, zip and torch errors all mean "not a weights file of ours"
            raise CheckpointError(f'{path}: not a PyTorch weights file this port can read '
                                  f'({_load_error_summary(e)}); convert the TF checkpoint again '
                                  f'with convert.py') from None
    if isinstance(obj, dict) and 'state_dict' in obj and 'config' in obj:
        try:
            config = PNASNetConfig.from_dict(dict(obj['config']))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f'{path}: its config is not this port\'s ({e})') from None
        state_dict = obj['state_dict']
    elif isinstance(obj, dict) and 'model' in obj and 'optimizer' in obj:
        raise CheckpointError(f'{path}: a train.py state (last.pth), not weights; pass it to '
                              f'train.py --resume, or use the best.pth beside it')
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        config, state_dict = PNASNetConfig.large(), obj
    else:
        raise CheckpointError(f'{path}: expected a convert.py output or a state dict of this model')
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor)
                                                   for v in state_dict.values()):
        raise CheckpointError(f'{path}: its state_dict is not a dict of tensors')
    names = obj.get('class_names') if isinstance(obj, dict) else None
    if names is not None and (not isinstance(names, (list, tuple)) or len(names) != config.num_classes):
        raise CheckpointError(f'{path}: class_names do not fit its {config.num_classes} classes')
    return {'config': config, 'state_dict': state_dict,
            'class_names': list(names) if names is not None else None,
            'source': obj.get('source') if isinstance(obj, dict) and 'config' in obj else None}


def load_state(net: NetworkImageNet, state_dict: dict, path: str) -> None:
    """Loads ``state_dict`` into ``net``, every tensor present and of its shape, or raises a
    CheckpointError that names the first misfits."""
    try:
        missing, unexpected = net.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        missing, unexpected = [str(e).strip().splitlines()[-1].strip()], []
    if missing or unexpected:
        what = (f'missing {missing[:3]}' if missing else '') + (
            f' unexpected {unexpected[:3]}' if unexpected else '')
        raise CheckpointError(f'{path}: weights do not fit the network of its config ({what.strip()}); '
                              f'convert the TF checkpoint again with convert.py')


def load_pretrained(path: str, auxiliary: bool = False, map_location='cpu',
                    **overrides) -> NetworkImageNet:
    """Builds the network a ``convert.py`` or ``train.py`` output describes, loads its weights,
    returns it in eval mode, with its ``class_names`` (None for the 1001 ImageNet classes).

    The file holds ``{'config': dict, 'state_dict': ...}`` (a ``.pth``, read with
    ``weights_only=True``, or a ``.safetensors`` with the config in its metadata); a bare state
    dict of this model is also accepted and taken as PNASNet-5 Large. ``auxiliary=True`` keeps the aux head (for fine-tuning);
    ``overrides`` change config fields that do not touch the weights (e.g. ``padding``,
    ``drop_path_prob``, ``image_size``).
    """
    obj = read_weights(path, map_location)
    config, state_dict = obj['config'], obj['state_dict']
    has_aux = any(_is_aux_key(k) for k in state_dict)
    if auxiliary and not has_aux:
        raise CheckpointError(f'{path}: holds no auxiliary-head weights; load with auxiliary=False')
    config = dataclasses.replace(config, auxiliary=auxiliary, **overrides)
    net = build_network(config)
    if not auxiliary:
        state_dict = {k: v for k, v in state_dict.items() if not _is_aux_key(k)}
    load_state(net, state_dict, path)
    net.class_names = obj['class_names']
    return net.eval()


# --- python model.py --summary ---------------------------------------------------------------------

def summarize(config: PNASNetConfig, image_size: Optional[int] = None, time_forward: bool = True) -> dict:
    """What a genotype and config make at ``image_size`` (default: the config's): parameters with
    and without the aux head, multiply-adds per image (counted by FlopCounterMode on the meta
    device: convolutions and the classifier, half their FLOPs), each cell's output shape, and
    with ``time_forward`` the plain eval forward's seconds per image on this machine's CPU."""
    from torch.utils.flop_counter import FlopCounterMode
    size = image_size or config.image_size
    aux_fits = config.aux_cell_index is not None and aux_kernel_size(config, size) >= 1
    config = dataclasses.replace(config, image_size=size, auxiliary=aux_fits)
    with torch.device('meta'):
        net = build_network(config).eval()
    params = sum(p.numel() for p in net.parameters())
    aux = sum(p.numel() for p in net.auxiliary_head.parameters()) if aux_fits else 0
    shapes = {'conv0': None}
    names = cell_scopes(net)
    hooks = [net.conv0_bn.register_forward_hook(lambda m, i, o: shapes.update(conv0=list(o.shape)))]
    for name, cell in zip(names, net.cells):
        hooks.append(cell.register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, list(o.shape))))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.empty(1, 3, size, size, device='meta'))
    for h in hooks:
        h.remove()
    genotype = config.genotype if isinstance(config.genotype, str) else 'custom'
    out = {'genotype': genotype, 'image_size': size, 'stem_multiplier': config.stem_multiplier,
           'num_conv_filters': config.num_conv_filters, 'num_cells': config.num_cells,
           'parameters': params - aux, 'parameters_with_aux': params if aux_fits else None,
           'multiply_adds': counter.get_total_flops() // 2, 'cell_outputs': shapes,
           'forward_seconds': None}
    if time_forward:
        import time
        real = NetworkImageNet(dataclasses.replace(config, auxiliary=False)).eval()
        x = torch.randn(1, 3, size, size)
        times = []
        with torch.inference_mode():
            real(x)
            for _ in range(3):
                t0 = time.perf_counter()
                real(x)
                times.append(time.perf_counter() - t0)
        out['forward_seconds'] = sorted(times)[1]
        out['threads'] = torch.get_num_threads()
    return out


def _format_summary(s: dict) -> List[str]:
    lines = [f'{s["genotype"]}: F={s["num_conv_filters"]}, {s["num_cells"]} cells, stem multiplier '
             f'{s["stem_multiplier"]:g}, at {s["image_size"]} px',
             f'  parameters: {s["parameters"]:,} without the aux head'
             + (f', {s["parameters_with_aux"]:,} with it' if s['parameters_with_aux'] else
                ' (the aux head does not fit this size)'),
             f'  multiply-adds: {s["multiply_adds"] / 1e9:.3f} G per image (FlopCounterMode)']
    if s['forward_seconds'] is not None:
        lines.append(f'  forward: {s["forward_seconds"] * 1e3:.0f} ms per image (batch 1, eval, '
                     f'CPU, {s["threads"]} threads)')
    lines.append('  outputs [N, C, H, W]:')
    lines += [f'    {name:14s} {shape}' for name, shape in s['cell_outputs'].items()]
    return lines


def main(argv=None) -> int:
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(description='What a genotype makes: python model.py --summary',
                                 epilog='More: docs/experiments.md')
    ap.add_argument('--summary', action='store_true', required=True,
                    help='print parameters, multiply-adds, cell output shapes and forward time')
    ap.add_argument('--genotype', default='PNASNet',
                    help='a name in genotypes.GENOTYPES, or a JSON file of genotypes.to_dict output')
    ap.add_argument('--compare', nargs=2, metavar=('A', 'B'), help='two genotypes side by side')
    ap.add_argument('--preset', choices=['large', 'mobile', 'cifar'], default='large',
                    help='large (331 px), mobile (224) or cifar (NetworkCIFAR, 32 px; PNASNetConfig.cifar)')
    ap.add_argument('--filters', type=int,
                    help='num_conv_filters (default: the preset\'s)')
    ap.add_argument('--cells', type=int, help='num_cells (default: the preset\'s)')
    ap.add_argument('--stem-multiplier', type=float, help='(default: the preset\'s)')
    ap.add_argument('--image-size', type=int,
                    help='default: the preset\'s (331 Large, 224 Mobile, 32 CIFAR)')
    ap.add_argument('--no-time', action='store_true', help='skip the timed forward')
    ap.add_argument('--json', action='store_true', help='print the figures as JSON')
    args = ap.parse_args(argv)
    for flag, low in (('filters', 1), ('cells', 1), ('image_size', MIN_IMAGE_SIZE)):
        value = getattr(args, flag)
        if value is not None and value < low:  # model.py imports nothing of the scripts' helpers
            ap.error(f'argument --{flag.replace("_", "-")}: {value} is below {low}')
    overrides = {k: v for k, v in (('num_conv_filters', args.filters), ('num_cells', args.cells),
                                   ('stem_multiplier', args.stem_multiplier)) if v is not None}
    try:
        results = []
        for name in args.compare or [args.genotype]:
            genotype = genotypes_mod.load(name)
            value = name if name in genotypes_mod.GENOTYPES else genotypes_mod.to_dict(genotype)
            config = getattr(PNASNetConfig, args.preset)(genotype=value, **overrides)
            result = summarize(config, args.image_size, time_forward=not args.no_time)
            result['genotype'] = name
            results.append(result)
    except (ValueError, TypeError) as e:  # GenotypeError is a ValueError
        print(f'model.py: error: {e}', file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results if args.compare else results[0], indent=1))
    elif args.compare:
        a, b = (_format_summary(r) for r in results)
        width = max(len(line) for line in a) + 2
        for k in range(max(len(a), len(b))):
            print(f'{a[k] if k < len(a) else "":{width}s}{b[k] if k < len(b) else ""}')
    else:
        print('\n'.join(_format_summary(results[0])))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
