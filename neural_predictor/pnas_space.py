"""PNAS's cell space (Liu et al., ECCV 2018, section 3.1) in genotypes.py's format.

A cell is B blocks. Block ``i`` adds two branches, each an operation applied to one of the
cell's inputs (0: the cell two back, 1: the previous cell, as genotypes.py numbers them) or to an
earlier block's output (``2 + j``). One cell serves the normal and the reduction position, and
the cell outputs the concatenation of all its blocks, as PNASNet-5 does. A block's two branches
are unordered: cells that differ only in that order are one cell, kept in the canonical form
(each block's branches sorted).

A cell here is a tuple of blocks, a block a pair of branches ``(input, op)``. As Optuna
parameters, block ``i`` is ``b{i}_in1``, ``b{i}_op1``, ``b{i}_in2``, ``b{i}_op2`` and the cell's
size ``blocks``.
"""
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

import genotypes

# PNAS's eight operations (section 3.1), by genotypes.py's names; PNAS's identity is skip_connect
OPS = ['skip_connect', 'avg_pool_3x3', 'max_pool_3x3', 'conv_7x1_1x7', 'sep_conv_3x3',
       'sep_conv_5x5', 'sep_conv_7x7', 'dil_conv_3x3']
BLOCKS = 5  # PNASNet-5

Branch = Tuple[int, str]
Block = Tuple[Branch, Branch]
Cell = Tuple[Block, ...]


def canonical(cell: Iterable) -> Cell:
    """The cell with each block's two branches in sorted order (the one form of equal cells)."""
    return tuple(tuple(sorted((int(i), str(op)) for i, op in block)) for block in cell)


def check(cell: Cell) -> Cell:
    for b, block in enumerate(cell):
        for i, op in block:
            if op not in OPS or not 0 <= i < 2 + b:
                raise ValueError(f'block {b}: ({i}, {op!r}) is outside PNAS\'s space')
    return canonical(cell)


def param_names(block: int) -> List[str]:
    return [f'b{block}_in1', f'b{block}_op1', f'b{block}_in2', f'b{block}_op2']


def choices(blocks: int) -> Dict[str, list]:
    """Every parameter's choices for cells of up to ``blocks`` blocks (``blocks`` aside)."""
    out = {}
    for b in range(blocks):
        n_in, op1, n_in2, op2 = param_names(b)
        out.update({n_in: list(range(2 + b)), op1: list(OPS), n_in2: list(range(2 + b)), op2: list(OPS)})
    return out


def to_params(cell: Cell) -> dict:
    params = {'blocks': len(cell)}
    for b, ((i1, o1), (i2, o2)) in enumerate(cell):
        params.update(zip(param_names(b), (i1, o1, i2, o2)))
    return params


def from_params(params: dict) -> Cell:
    blocks = int(params['blocks'])
    cell = []
    for b in range(blocks):
        i1, o1, i2, o2 = (params[n] for n in param_names(b))
        cell.append(((i1, o1), (i2, o2)))
    return check(cell)


def cell_of(params: dict) -> Optional[Cell]:
    """The cell of a trial's parameters; None while they are incomplete (a worker is still
    drawing them) or outside the space."""
    try:
        return from_params(params)
    except (KeyError, ValueError):
        return None


def genotype(cell: Cell) -> genotypes.Genotype:
    """The cell as genotypes.py builds it: the same cell at both positions, all blocks concatenated."""
    ops = [(op, i) for block in cell for i, op in block]
    concat = list(range(2, 2 + len(cell)))
    return genotypes.validate(genotypes.Genotype(normal=ops, normal_concat=concat,
                                                 reduce=list(ops), reduce_concat=list(concat)))


def from_genotype(g: genotypes.Genotype) -> Cell:
    pairs = list(g.normal)
    return check([((pairs[2 * b][1], pairs[2 * b][0]), (pairs[2 * b + 1][1], pairs[2 * b + 1][0]))
                  for b in range(len(pairs) // 2)])


def genotype_entry(cell: Cell, name: str) -> str:
    """A genotypes.py entry for the cell, ready to paste (and to add to GENOTYPES)."""
    rows = '\n'.join(f"    ('{o1}', {i1}), ('{o2}', {i2})," for (i1, o1), (i2, o2) in cell)
    concat = list(range(2, 2 + len(cell)))
    cells = f'_{name.upper()}'
    return (f'{cells} = [\n{rows}\n]\n'
            f'{name} = Genotype(normal={cells}, normal_concat={concat},\n'
            f'{" " * len(name)}            reduce={cells}, reduce_concat={concat})')


def _branches(block: int) -> List[Branch]:
    return [(i, op) for i in range(2 + block) for op in OPS]


def random_cell(rng: np.random.RandomState, blocks: int) -> Cell:
    cell = []
    for b in range(blocks):
        options = _branches(b)
        cell.append((options[rng.randint(len(options))], options[rng.randint(len(options))]))
    return canonical(cell)


def one_block_cells() -> List[Cell]:
    """Every cell of one block (136: unordered pairs of 16 branches)."""
    return expand(())


def expand(cell: Cell) -> List[Cell]:
    """Every cell of one more block whose first blocks are ``cell`` (PNAS's expansion)."""
    options = _branches(len(cell))
    return [cell + ((options[x], options[y]),) for x in range(len(options)) for y in range(x, len(options))]


def neighbours(cell: Cell) -> List[Cell]:
    """Every other cell of the same size with one branch's input or operation changed."""
    out = set()
    for b, block in enumerate(cell):
        for k in range(2):
            i, op = block[k]
            other = block[1 - k]
            for new in [(j, op) for j in range(2 + b) if j != i] + [(i, o) for o in OPS if o != op]:
                changed = list(cell)
                changed[b] = (new, other)
                out.add(canonical(changed))
    out.discard(cell)
    return sorted(out)


def features(cells: Sequence[Cell], blocks: int) -> np.ndarray:
    """PNAS's fixed-length encoding of cells of any size: per block the one-hot input and op of
    each branch (concatenated), averaged over the blocks (the paper's MLP averages its block
    embeddings), then the cell's size one-hot."""
    n_in, n_op = blocks + 1, len(OPS)
    width = 2 * (n_in + n_op)
    out = np.zeros((len(cells), width + blocks), np.float32)
    index = {op: k for k, op in enumerate(OPS)}
    for r, cell in enumerate(cells):
        for block in cell:
            for k, (i, op) in enumerate(block):
                base = k * (n_in + n_op)
                out[r, base + i] += 1.0 / len(cell)
                out[r, base + n_in + index[op]] += 1.0 / len(cell)
        out[r, width + len(cell) - 1] = 1.0
    return out
