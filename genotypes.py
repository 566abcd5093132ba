"""Architectures as data: each genotype is a plain namedtuple, and the network is built from it.

Numbering follows DARTS: in a cell, state 0 is the output of the cell two back, state 1 the
previous cell's output, and state ``2 + i`` the result of combination ``i``. TF-Slim numbers the
first two the other way round (0 = previous cell), so its PNASNet indices ``1, 1, 0, 0, 0, 0, 4, 0,
1, 0`` appear here with 0 and 1 swapped. Combination ``i`` adds ``op(normal[2i])`` and
``op(normal[2i+1])``; the cell outputs the concat of the states listed in ``normal_concat``.

An experiment is an edit here: add a genotype, then build it with
``model.NetworkImageNet(model.PNASNetConfig(genotype='MyGenotype'))``.
"""
import json
import os
from collections import namedtuple
from typing import Union

Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')

# the op names a genotype may use: exactly the keys of operations.OPS (a test keeps them equal)
PRIMITIVES = ['avg_pool_3x3', 'conv_7x1_1x7', 'dil_conv_3x3', 'dil_conv_5x5', 'max_pool_3x3',
              'none', 'sep_conv_3x3', 'sep_conv_5x5', 'sep_conv_7x7', 'skip_connect']

# PNASNet-5 (Liu et al., ECCV 2018): one cell for both the normal and the reduction position.
# TF-Slim's 'none' is an identity, here 'skip_connect'.
_PNAS_CELL = [
    ('sep_conv_5x5', 0), ('max_pool_3x3', 0),
    ('sep_conv_7x7', 1), ('max_pool_3x3', 1),
    ('sep_conv_5x5', 1), ('sep_conv_3x3', 1),
    ('sep_conv_3x3', 4), ('max_pool_3x3', 1),
    ('sep_conv_3x3', 0), ('skip_connect', 1),
]
PNASNet = Genotype(normal=_PNAS_CELL, normal_concat=[2, 3, 4, 5, 6],
                   reduce=_PNAS_CELL, reduce_concat=[2, 3, 4, 5, 6])

# NASNet-A (Zoph et al., CVPR 2018).
NASNet = Genotype(
    normal=[
        ('sep_conv_5x5', 1), ('sep_conv_3x3', 0),
        ('sep_conv_5x5', 0), ('sep_conv_3x3', 0),
        ('avg_pool_3x3', 1), ('skip_connect', 0),
        ('avg_pool_3x3', 0), ('avg_pool_3x3', 0),
        ('sep_conv_3x3', 1), ('skip_connect', 1),
    ],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[
        ('sep_conv_5x5', 1), ('sep_conv_7x7', 0),
        ('max_pool_3x3', 1), ('sep_conv_7x7', 0),
        ('avg_pool_3x3', 1), ('sep_conv_5x5', 0),
        ('skip_connect', 3), ('avg_pool_3x3', 2),
        ('sep_conv_3x3', 2), ('max_pool_3x3', 1),
    ],
    reduce_concat=[4, 5, 6],
)

# AmoebaNet-A (Real et al., AAAI 2019).
AmoebaNet = Genotype(
    normal=[
        ('avg_pool_3x3', 0), ('max_pool_3x3', 1),
        ('sep_conv_3x3', 0), ('sep_conv_5x5', 2),
        ('sep_conv_3x3', 0), ('avg_pool_3x3', 3),
        ('sep_conv_3x3', 1), ('skip_connect', 1),
        ('skip_connect', 0), ('avg_pool_3x3', 1),
    ],
    normal_concat=[4, 5, 6],
    reduce=[
        ('avg_pool_3x3', 0), ('sep_conv_3x3', 1),
        ('max_pool_3x3', 0), ('sep_conv_7x7', 2),
        ('sep_conv_7x7', 0), ('avg_pool_3x3', 1),
        ('max_pool_3x3', 0), ('max_pool_3x3', 1),
        ('conv_7x1_1x7', 0), ('sep_conv_3x3', 5),
    ],
    reduce_concat=[3, 4, 6],
)

# DARTS (Liu et al., ICLR 2019), first- and second-order search.
DARTS_V1 = Genotype(
    normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1),
            ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0),
            ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)],
    reduce_concat=[2, 3, 4, 5],
)
DARTS_V2 = Genotype(
    normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
            ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1),
            ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)],
    reduce_concat=[2, 3, 4, 5],
)
DARTS = DARTS_V2

GENOTYPES = {
    'PNASNet': PNASNet, 'NASNet': NASNet, 'AmoebaNet': AmoebaNet,
    'DARTS_V1': DARTS_V1, 'DARTS_V2': DARTS_V2,
}


class GenotypeError(ValueError):
    pass


def _validate_half(genotype: Genotype, half: str) -> None:
    ops, concat = getattr(genotype, half), getattr(genotype, half + '_concat')
    if not isinstance(ops, (list, tuple)) or not ops or len(ops) % 2:
        raise GenotypeError(f'{half}: needs a non-empty, even-length list of (op, input) pairs, '
                            f'got {ops!r}')
    for j, entry in enumerate(ops):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            raise GenotypeError(f'{half}[{j}] = {entry!r}: expected an (op_name, input_index) pair')
        name, index = entry
        if name not in PRIMITIVES:
            raise GenotypeError(f'{half}[{j}] = {entry!r}: unknown op {name!r}; '
                                f'known ops: {", ".join(PRIMITIVES)}')
        # combination j // 2 may read the two cell inputs and the combinations before it
        limit = 2 + j // 2
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < limit:
            raise GenotypeError(f'{half}[{j}] = {entry!r}: input index must be an int in '
                                f'[0, {limit - 1}] (0 = the cell two back, 1 = the previous cell, '
                                f'2.. = earlier combinations of this cell)')
    n_states = 2 + len(ops) // 2
    if not isinstance(concat, (list, tuple, range)) or not len(concat):
        raise GenotypeError(f'{half}_concat: needs a non-empty list of state indices, got {concat!r}')
    for c in concat:
        if not isinstance(c, int) or isinstance(c, bool) or not 2 <= c < n_states:
            raise GenotypeError(f'{half}_concat: entry {c!r} must be an int in [2, {n_states - 1}] '
                                f'(a combination of this cell)')
    if len(set(concat)) != len(concat):
        raise GenotypeError(f'{half}_concat: {list(concat)!r} lists a state twice')


def validate(genotype: Genotype) -> Genotype:
    """Checks a genotype and returns it; raises GenotypeError naming the bad entry."""
    if not isinstance(genotype, Genotype):
        raise GenotypeError(f'expected a genotypes.Genotype, got {type(genotype).__name__}')
    _validate_half(genotype, 'normal')
    _validate_half(genotype, 'reduce')
    return genotype


def get(genotype: Union[str, Genotype, dict]) -> Genotype:
    """A genotype by name (from GENOTYPES), as a Genotype, or as the dict saved in checkpoints."""
    if isinstance(genotype, str):
        if genotype not in GENOTYPES:
            raise GenotypeError(f'unknown genotype {genotype!r}; known: {", ".join(GENOTYPES)}')
        genotype = GENOTYPES[genotype]
    elif isinstance(genotype, dict):
        try:
            genotype = Genotype(
                normal=[tuple(e) for e in genotype['normal']],
                normal_concat=list(genotype['normal_concat']),
                reduce=[tuple(e) for e in genotype['reduce']],
                reduce_concat=list(genotype['reduce_concat']))
        except (KeyError, TypeError) as e:
            raise GenotypeError(f'a genotype dict needs the lists normal, normal_concat, reduce, '
                                f'reduce_concat: {e}') from None
    return validate(genotype)


def load(name_or_file: str) -> Genotype:
    """A genotype by name, or from a JSON file holding ``to_dict`` output."""
    if name_or_file.endswith('.json') or os.path.isfile(name_or_file):
        try:
            with open(name_or_file) as f:
                return get(json.load(f))
        except (OSError, ValueError) as e:
            if isinstance(e, GenotypeError):
                raise
            raise GenotypeError(f'{name_or_file}: cannot read a genotype from it ({e})') from None
    return get(name_or_file)


def to_dict(genotype: Genotype) -> dict:
    """Plain lists, which load with torch.load(weights_only=True)."""
    return {'normal': [list(e) for e in genotype.normal],
            'normal_concat': list(genotype.normal_concat),
            'reduce': [list(e) for e in genotype.reduce],
            'reduce_concat': list(genotype.reduce_concat)}
