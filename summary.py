"""What a genotype makes: parameters, multiply-adds, each cell's output shape, a forward's time.

    python summary.py --genotype DARTS_V2 --no-time
    python summary.py --compare PNASNet DARTS_V2 --preset mobile --no-time
    python model.py --summary ...          # the same tool, under the name it had before

More: docs/experiments.md
"""
import argparse
import dataclasses
import json
import sys
import time
from typing import List, Optional

import torch

import genotypes as genotypes_mod
from model import MIN_IMAGE_SIZE, NetworkImageNet, PNASNetConfig, aux_kernel_size, build_network
from tf_weights import cell_scopes  # the cells' names: TF-Slim's scopes
from utils import count_costs


def summarize(config: PNASNetConfig, image_size: Optional[int] = None, time_forward: bool = True) -> dict:
    """What a genotype and config make at ``image_size`` (default: the config's): parameters with
    and without the aux head, multiply-adds per image (counted by FlopCounterMode on the meta
    device: convolutions and the classifier, half their FLOPs), each cell's output shape, and
    with ``time_forward`` the plain eval forward's seconds per image on this machine's CPU."""
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
    _, multiply_adds = count_costs(net, size)
    for h in hooks:
        h.remove()
    genotype = config.genotype if isinstance(config.genotype, str) else 'custom'
    out = {'genotype': genotype, 'image_size': size, 'stem_multiplier': config.stem_multiplier,
           'num_conv_filters': config.num_conv_filters, 'num_cells': config.num_cells,
           'parameters': params - aux, 'parameters_with_aux': params if aux_fits else None,
           'multiply_adds': multiply_adds, 'cell_outputs': shapes,
           'forward_seconds': None}
    if time_forward:
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
    ap = argparse.ArgumentParser(description='What a genotype makes: parameters, multiply-adds, '
                                             'cell output shapes and forward time',
                                 epilog='More: docs/experiments.md')
    ap.add_argument('--summary', action='store_true',
                    help='accepted for `python model.py --summary`, which forwards here')
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
        if value is not None and value < low:
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
        print(f'{ap.prog}: error: {e}', file=sys.stderr)
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
