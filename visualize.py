"""Draws a genotype's normal and reduction cells: each op a node, each input an edge.

    python visualize.py PNASNet                    # PNASNet.png and PNASNet.svg
    python visualize.py mine.json --output cells   # a genotypes.to_dict JSON file -> cells.png/.svg

Inputs ``c_{k-2}`` (state 0) and ``c_{k-1}`` (state 1) are on the left; each op reads one state,
each combination adds two ops into a new state, and the cell's output concatenates the states of
its ``*_concat`` list. Drawn with matplotlib alone (no graphviz).
"""
import argparse
import io
import os
import sys
from typing import Dict, List, Tuple

import genotypes as genotypes_mod
import utils

COLORS = {'input': '#cfe2f3', 'op': '#fff2cc', 'add': '#d9ead3', 'output': '#f4cccc'}


def cell_graph(ops: List[Tuple[str, int]], concat: List[int]):
    """Nodes (id, label, kind, layer) and edges (from, to) of one cell, ops as nodes."""
    nodes = [('s0', 'c_{k-2}', 'input', 0), ('s1', 'c_{k-1}', 'input', 0)]
    layer: Dict[str, int] = {'s0': 0, 's1': 0}
    edges = []
    for i in range(len(ops) // 2):
        op_layers = []
        for j in (2 * i, 2 * i + 1):
            name, index = ops[j]
            src = f's{index}'
            layer[f'op{j}'] = layer[src] + 1
            op_layers.append(layer[f'op{j}'])
            nodes.append((f'op{j}', name, 'op', layer[f'op{j}']))
            edges.append((src, f'op{j}'))
        state = f's{2 + i}'
        layer[state] = max(op_layers) + 1
        nodes.append((state, f'+ ({2 + i})', 'add', layer[state]))
        edges += [(f'op{2 * i}', state), (f'op{2 * i + 1}', state)]
    last = max(layer.values()) + 1
    nodes.append(('out', 'concat ' + ', '.join(map(str, concat)), 'output', last))
    edges += [(f's{c}', 'out') for c in concat]
    return nodes, edges


def draw_cell(ax, ops, concat, title: str) -> None:
    nodes, edges = cell_graph(ops, concat)
    by_layer: Dict[int, List[str]] = {}
    for node_id, _, _, lay in nodes:
        by_layer.setdefault(lay, []).append(node_id)
    pos = {}
    for lay, ids in by_layer.items():
        for k, node_id in enumerate(ids):
            pos[node_id] = (lay * 2.2, (len(ids) - 1) / 2 - k)
    for a, b in edges:
        ax.annotate('', xy=pos[b], xytext=pos[a],
                    arrowprops=dict(arrowstyle='->', color='#555555', lw=1.0, shrinkA=18, shrinkB=18))
    for node_id, label, kind, _ in nodes:
        x, y = pos[node_id]
        ax.text(x, y, label, ha='center', va='center', fontsize=8,
                bbox=dict(boxstyle='round,pad=0.4', fc=COLORS[kind], ec='#333333', lw=0.8))
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 1.2, max(xs) + 1.2)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.set_title(title)
    ax.axis('off')


def render(genotype: genotypes_mod.Genotype, title: str):
    """The figure of both cells."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 1, figsize=(14, 9))
    draw_cell(axes[0], genotype.normal, genotype.normal_concat, f'{title}: normal cell')
    draw_cell(axes[1], genotype.reduce, genotype.reduce_concat, f'{title}: reduction cell')
    fig.tight_layout()
    return fig


def save(genotype: genotypes_mod.Genotype, title: str, prefix: str) -> List[str]:
    """Writes ``prefix.png`` and ``prefix.svg`` (each atomically); returns their paths."""
    import matplotlib.pyplot as plt
    fig = render(genotype, title)
    paths = []
    try:
        for fmt in ('png', 'svg'):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=120)
            path = f'{prefix}.{fmt}'
            utils.write_atomic(path, lambda f: f.write(buf.getvalue()))
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/experiments.md')
    ap.add_argument('genotype', help='a name in genotypes.GENOTYPES, or a JSON file of '
                                     'genotypes.to_dict output')
    ap.add_argument('--output', help='path prefix of the .png and .svg (default: the genotype\'s name)')
    args = ap.parse_args(argv)
    try:
        genotype = genotypes_mod.load(args.genotype)
    except genotypes_mod.GenotypeError as e:
        print(f'visualize.py: error: {e}', file=sys.stderr)
        return 1
    title = os.path.splitext(os.path.basename(args.genotype))[0]
    prefix = args.output or title
    if prefix.endswith(('.png', '.svg')):
        prefix = prefix[:-4]
    try:
        paths = save(genotype, title, prefix)
    except OSError as e:
        print(f'visualize.py: error: cannot write {prefix}.png/.svg ({e.strerror or e})', file=sys.stderr)
        return 1
    print('wrote ' + ' and '.join(paths))
    return 0


if __name__ == '__main__':
    sys.exit(main())
