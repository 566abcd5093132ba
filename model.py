"""PNASNet-5 (Liu et al., ECCV 2018): DARTS-style, genotype-driven NetworkImageNet and NetworkCIFAR.

TF-Slim's ``pnasnet.py`` exactly: a VALID 3x3 stem conv, two stride-2 stem cells, ``num_cells``
cells from a genotype of ``genotypes.py`` with reductions at ``int(k/3 * num_cells)``, ReLU, global
mean, dropout, FC. ``engine.InferenceModel`` (the fast path) reads this network; it is not part of it.
Input: RGB NCHW float32 in [-1, 1] as ``utils.preprocess_for_eval`` gives it (331 px Large, 224
Mobile). The 1001 logits put the background class at index 0; ImageNet class k is logit k + 1.
"""
import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

import genotypes as genotypes_mod
from operations import (OPS, PADDING_MODES, Conv2dSame, FactorizedReduce, ReLUConvBN, batch_norm,
                        drop_path)
from weights_io import CheckpointError, load_state, read_weights_file


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
                                     # 'cifar' (NetworkCIFAR): a 3x3 SAME conv of F * stem_multiplier

    @classmethod
    def large(cls, **overrides) -> 'PNASNetConfig':
        return cls(**overrides)

    @classmethod
    def cifar(cls, **overrides) -> 'PNASNetConfig':
        """PNASNet-5 on CIFAR-10 as the paper's Table 1 has it (N = 3, F = 48: num_cells = 3N
        with the reductions at cells 3 and 6; 3.19 M parameters without the aux head, the paper's
        3.2 M), laid out as TF-Slim's cifar_config: stem multiplier 3, no dropout."""
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
    def cell_layout(self) -> List[Tuple[int, bool]]:
        """(filters C, reduces) of every cell, stem cells first: F / rate^2 and F / rate for the
        stem cells, then F, scaled by ``filter_scaling_rate`` at each reduction."""
        rate, scale = self.filter_scaling_rate, 1.0
        scales = [(1.0 / rate ** 2, True), (1.0 / rate, True)][:self.num_stem_cells]
        for i in range(self.num_cells):
            scale *= rate if i in self.reduction_indices else 1.0
            scales.append((scale, i in self.reduction_indices))
        return [(int(self.num_conv_filters * s), reduces) for s, reduces in scales]

    @property
    def aux_cell_index(self) -> Optional[int]:
        red = self.reduction_indices
        return red[1] - 1 if len(red) >= 2 else None

    BODY_FIELDS = ('stem', 'stem_multiplier', 'num_conv_filters', 'num_cells',
                   'num_reduction_layers', 'filter_scaling_rate')

    def same_body(self, other: 'PNASNetConfig') -> bool:
        """Whether both build the same stem and cells (genotype included), whatever their classes,
        input size and heads: ``config.same_body(PNASNetConfig.mobile())`` recognises a preset."""
        return (all(getattr(self, f) == getattr(other, f) for f in self.BODY_FIELDS)
                and genotypes_mod.get(self.genotype) == genotypes_mod.get(other.genotype))

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
        self.steps = len(ops) // 2
        self.concat = list(concat)
        self.multiplier = len(self.concat)
        self.indices = [index for _, index in ops]
        self._dropped = [name != 'skip_connect' for name, _ in ops]  # TF-Slim keeps the identity whole
        self._ops = nn.ModuleList()  # state-dict keys cells.K._ops.J; read it as ``ops``
        for name, index in ops:
            stride = 2 if reduction and index < 2 else 1
            C_in = C0 if index == 0 else C
            self._ops.append(OPS[name](C_in, C, stride, padding))

    @property
    def ops(self):
        """The ops in genotype order: 2i and 2i + 1 sum to state 2 + i; op j reads state
        ``indices[j]`` (0, 1: the preprocessed inputs); the output concatenates ``concat``."""
        return self._ops

    def forward(self, s0: Optional[torch.Tensor], s1: torch.Tensor,
                drop_prob: float = 0.0) -> torch.Tensor:
        if self.preprocess0 is None or s0 is None:
            x0 = s1  # the first stem cell reads the stem conv twice, untransformed once
        else:
            x0 = self.preprocess0(s0)
        states = [x0, self.preprocess1(s1)]
        hidden: List[torch.Tensor] = []
        for i, op in enumerate(self._ops):
            h = op(states[self.indices[i]])
            if self.training and drop_prob > 0.0 and self._dropped[i]:
                h = drop_path(h, drop_prob * self.drop_scale)
            hidden.append(h)
            if len(hidden) == 2:  # a combination: the sum of its two ops
                states.append(hidden[0] + hidden[1])
                hidden = []
        return torch.cat([states[i] for i in self.concat], dim=1)


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


class NetworkImageNet(nn.Module):
    """PNASNet-5 and its relatives on TF-Slim's ImageNet stem (a VALID 3x3/2 conv and two reduction
    cells; ``NetworkCIFAR`` has another). ``global_pool``: 'avg' (TF-Slim's global mean), or ''
    for the unpooled map, which needs ``config.num_classes == 0``, as timm has it."""

    stem = 'imagenet'  # the config.stem this class builds

    def __init__(self, config: Optional[PNASNetConfig] = None, global_pool: str = 'avg'):
        super().__init__()
        config = config or PNASNetConfig()
        _check_global_pool(global_pool, config.num_classes)
        if config.padding not in PADDING_MODES:
            raise ValueError(f'config.padding must be one of {PADDING_MODES}, got {config.padding!r}')
        if config.stem != self.stem:
            raise ValueError(f'config.stem is {config.stem!r}, but {type(self).__name__} builds '
                             f'{self.stem!r}; model.build_network picks the class of a config')
        self.config = config
        self.genotype = genotype = genotypes_mod.get(config.genotype)
        self.drop_path_prob = config.drop_path_prob

        C_stem = config.stem_filters
        stem_cells = config.num_stem_cells
        self.conv0 = self.stem_conv(C_stem)
        self.conv0_bn = batch_norm(C_stem)

        total_cells = config.num_cells + stem_cells
        self.cells = nn.ModuleList()
        C_prev_prev, C_prev, reduction_prev = None, C_stem, False
        for k, (C, reduction) in enumerate(config.cell_layout):
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
        stride = self.conv0.stride[0]
        taps = [(0, C_stem, stride, 'conv0_bn')]
        for k, cell in enumerate(self.cells):
            stride *= 2 if cell.reduction else 1
            last_at_stride = k + 1 == len(self.cells) or self.cells[k + 1].reduction
            if last_at_stride:
                taps.append((k + 1, cell.multiplier * cell.C, stride, f'cells.{k}'))
        self._taps = [layer for layer, _, _, _ in taps]
        # timm's form (a list of dicts); hubconf.FeatureInfo gives it timm's accessors
        self.feature_info = [{'num_chs': c, 'reduction': r, 'module': m} for _, c, r, m in taps]
        self.grad_checkpointing = False  # set_grad_checkpointing: recompute each cell in backward
        self.class_names: Optional[List[str]] = None  # set by load_pretrained from a train.py output

        self.aux_index = -1  # position in self.cells of the cell the aux head reads; -1: none
        self.auxiliary_head = None
        if config.auxiliary and config.aux_cell_index is not None:
            self.aux_index = config.aux_cell_index + stem_cells
            kernel = aux_kernel_size(config, config.image_size)
            if kernel < 1:
                raise ValueError(f'image_size {config.image_size} is too small for the auxiliary head')
            read = self.cells[self.aux_index]
            self.auxiliary_head = AuxiliaryHead(read.multiplier * read.C, config.num_classes, kernel)

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
                if self.auxiliary_head is not None and with_aux and self.training and k == self.aux_index:
                    logits_aux = self.auxiliary_head(out)
        return maps, logits_aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last cell's output after the final ReLU: [N, num_features, h, w]. Never runs the
        aux head, in training mode neither: only ``forward`` does."""
        n = len(self.cells)
        return self._forward(x, n, [n], False)[0][0]

    @staticmethod
    def stem_conv(C_stem: int) -> nn.Conv2d:
        """TF-Slim's ImageNet conv0: 3x3, stride 2, VALID."""
        return nn.Conv2d(3, C_stem, 3, stride=2, padding=0, bias=False)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Fresh classifiers (the aux one too) for ``num_classes`` on the kept body, as timm has it:
        0, the pooled features come out; 0 with ``global_pool`` '', the unpooled map."""
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
        """The maps at strides 2, 4, 8, 16 and 32 (``feature_info``; the last is forward_features'),
        or those of ``out_indices``; cells after the last one asked for are not run."""
        n = len(self._taps)
        for i in out_indices or []:
            if not -n <= i < n:
                raise ValueError(f'out_indices: {i} is not one of the {n} feature maps')
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
        """Logits of ``forward_features``' map (pooled unless ``global_pool`` is '') or of pooled
        features, as timm has it; ``pre_logits``: the pooled features after dropout."""
        if self.global_pool == 'avg':
            features = _global_mean(features)
        features = self.dropout(features)
        return features if pre_logits else self.classifier(features)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each cell in the backward pass instead of keeping its activations (timm's)."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """The logits [N, num_classes]; in training mode with the aux head ``(logits, logits_aux)``,
        torchvision's Inception convention."""
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
    dropout and FC. Default config: ``PNASNetConfig.cifar()`` (PNASNet-5, N = 3, F = 48); a
    config of another stem is taken with ``stem='cifar'``. All of NetworkImageNet's interface
    applies."""

    stem = 'cifar'

    def __init__(self, config: Optional[PNASNetConfig] = None, global_pool: str = 'avg'):
        config = config or PNASNetConfig.cifar()
        super().__init__(dataclasses.replace(config, stem='cifar'), global_pool)

    @staticmethod
    def stem_conv(C_stem: int) -> nn.Conv2d:
        """TF-Slim's l1_stem_3x3: 3x3, stride 1, SAME."""
        return nn.Conv2d(3, C_stem, 3, stride=1, padding=1, bias=False)


def build_network(config: PNASNetConfig, **kwargs) -> NetworkImageNet:
    """The network class that ``config.stem`` asks for: NetworkCIFAR or NetworkImageNet."""
    return (NetworkCIFAR if config.stem == 'cifar' else NetworkImageNet)(config, **kwargs)


def read_weights(path: str, map_location='cpu') -> dict:
    """A ``convert.py`` or ``train.py`` output as ``{'config': PNASNetConfig, 'state_dict': ...,
    'class_names': list or None, 'source': dict}``, without building the network (the file
    formats are ``weights_io.read_weights_file``'s); a bare state dict is PNASNet-5 Large."""
    obj = read_weights_file(path, map_location)
    if obj['config'] is None:
        config = PNASNetConfig.large()
    else:
        try:
            config = PNASNetConfig.from_dict(dict(obj['config']))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f'{path}: its config is not this port\'s ({e})') from None
    names = obj['class_names']
    if names is not None and (not isinstance(names, (list, tuple)) or len(names) != config.num_classes):
        raise CheckpointError(f'{path}: class_names do not fit its {config.num_classes} classes')
    return dict(obj, config=config, class_names=list(names) if names is not None else None)


def pnasnet5large(weights=None, **overrides) -> NetworkImageNet:
    """PNASNet-5 Large (331 px): random weights, a weights file, or a weights object
    (hubconf.PNASNet5_Large_Weights.IMAGENET1K_TF: the official ones, cached on first use)."""
    return _preset('large', weights, overrides)


def pnasnet5mobile(weights=None, **overrides) -> NetworkImageNet:
    """PNASNet-5 Mobile (224 px), as ``pnasnet5large``."""
    return _preset('mobile', weights, overrides)


def _preset(name: str, weights, overrides: dict) -> NetworkImageNet:
    if weights is None:
        return NetworkImageNet(getattr(PNASNetConfig, name)(**overrides))
    return load_pretrained(weights if isinstance(weights, str) else weights.file(name), **overrides)


def load_pretrained(path: str, auxiliary: bool = False, map_location='cpu',
                    **overrides) -> NetworkImageNet:
    """Builds the network a ``convert.py`` or ``train.py`` output (``read_weights``) describes,
    loads its weights, returns it in eval mode, with its ``class_names`` (None for the 1001
    ImageNet classes). ``auxiliary=True`` keeps the aux head (for fine-tuning); ``overrides``
    change config fields that do not touch the weights (``padding``, ``drop_path_prob``, ...)."""
    obj = read_weights(path, map_location)
    config, state_dict = obj['config'], obj['state_dict']
    has_aux = any(k.startswith('auxiliary_head.') for k in state_dict)
    if auxiliary and not has_aux:
        raise CheckpointError(f'{path}: holds no auxiliary-head weights; load with auxiliary=False')
    config = dataclasses.replace(config, auxiliary=auxiliary, **overrides)
    net = build_network(config)
    if not auxiliary:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('auxiliary_head.')}
    load_state(net, state_dict, path)
    net.class_names = obj['class_names']
    return net.eval()


if __name__ == '__main__':
    # `python model.py --summary ...`: the summary tool lives in summary.py, a script on top of
    # this module; the old command forwards there
    import summary
    raise SystemExit(summary.main())
