"""Fine-tunes a converted PNASNet-5 on your images, or trains any genotype from scratch.

    python train.py --data DIR --output runs/ft --weights data/PNASNet-5_Large.pth
    python train.py --data DIR --output runs/head --weights data/PNASNet-5_Mobile.pth --freeze-body
    python train.py --data DIR --output runs/new --genotype DARTS_V2 --preset mobile
    python train.py --data DIR --resume runs/ft/last.pth        # go on after Ctrl-C or a crash
    torchrun --nproc_per_node=2 train.py --data DIR --output runs/ddp ...

DIR holds train/ and val/, one folder per class (torchvision's ImageFolder layout). The defaults
are TF-Slim's recipe for these nets; each default's source is in its help text below.
``--output`` receives last.pth (everything to resume), best.pth (the best weights by val
Prec@1, for main.py and model.load_pretrained), log.jsonl and curves.png.
"""
import argparse
import copy
import dataclasses
import json
import math
import os
import random
import sys
import time
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import cifar
import genotypes as genotypes_mod
import model as model_mod
import pretrained
import runtime
import utils
import weights_io
from runtime import UserError

STATE_KIND = 'pnasnet-train-state'

# Every recipe default, with where it comes from. None means "decided from the network" (below).
RECIPE = {
    'epochs': (10, 'a fine-tuning run; TF-Slim trained Large from scratch for 250,000 steps'),
    'batch_size': (32, "TF-Slim train_image_classifier.py --batch_size"),
    'optimizer': ('rmsprop', 'TF-Slim train_image_classifier.py, as NASNet and PNASNet were trained'),
    'lr': (0.01, "TF-Slim train_image_classifier.py --learning_rate"),
    'momentum': (0.9, "TF-Slim --rmsprop_momentum; also SGD's"),
    'rmsprop_decay': (0.9, 'TF-Slim --rmsprop_decay'),
    'rmsprop_eps': (1.0, 'TF-Slim --opt_epsilon'),
    'schedule': ('exponential', "TF-Slim --learning_rate_decay_type, staircase"),
    'decay_rate': (0.97, 'the NASNet paper (TF-Slim script default 0.94)'),
    'decay_epochs': (2.4, 'the NASNet paper (TF-Slim script default 2)'),
    'warmup_epochs': (0.0, 'TF-Slim has no warmup'),
    'weight_decay': (4e-5, "TF-Slim nasnet/pnasnet arg scope, L2 on conv and FC weights only"),
    'label_smoothing': (0.1, 'the NASNet paper (TF-Slim script default 0)'),
    'aux_weight': (0.4, 'TF-Slim train_image_classifier.py, weights=0.4 on the AuxLogits loss'),
    'drop_path': (None, 'TF-Slim drop_path_keep_prob: 0.6 (rate 0.4) for Large, 1.0 (rate 0) '
                        'for Mobile; a config of neither preset gets 0.4'),
    'clip_grad': (5.0, "DARTS's train.py and train_imagenet.py (--grad_clip 5); 0 turns it off"),
    'ema': (0.0, 'TF-Slim --moving_average_decay, off by default; 0.9999 is the usual value'),
    'bn_momentum': (0.1, "PyTorch's; TF-Slim's BN decay 0.9997 (momentum 0.0003) suits its "
                         "250,000-step runs, not a fine-tuning run"),
    'image_size': (None, "the weights' (331 Large, 224 Mobile), or the preset's"),
    'seed': (0, ''),
}
# --dataset cifar10: the published CIFAR-10 protocol, where it differs from the above
CIFAR_RECIPE = {
    'epochs': (600, 'DARTS train.py; TF-Slim cifar_config: 937,500 steps of batch 32'),
    'batch_size': (96, 'DARTS train.py'),
    'optimizer': ('sgd', 'momentum SGD, DARTS train.py'),
    'lr': (0.025, 'DARTS train.py; the TF-Slim NASNet CIFAR notes'),
    'schedule': ('cosine', 'DARTS; TF-Slim: cosine, one period'),
    'weight_decay': (3e-4, 'DARTS train.py'),
    'label_smoothing': (0.0, 'not part of the CIFAR protocol'),
    'preset': ('cifar', 'PNAS Table 1: N=3, F=48'),
    'image_size': (32, 'CIFAR-10'),
    'drop_path': (0.4, 'TF-Slim cifar_config drop_path_keep_prob 0.6, with its schedule'),
}
# Options a resumed run keeps from its last.pth: giving another value is refused.
KEPT_ON_RESUME = ['dataset', 'valid_size', 'batch_size', 'optimizer', 'lr', 'momentum', 'rmsprop_decay', 'rmsprop_eps',
                  'schedule', 'decay_rate', 'decay_epochs', 'warmup_epochs', 'weight_decay',
                  'label_smoothing', 'aux_weight', 'drop_path', 'drop_path_fixed', 'clip_grad',
                  'ema', 'bn_momentum', 'image_size', 'seed', 'weights', 'genotype', 'preset',
                  'filters', 'cells', 'stem_multiplier', 'freeze_body', 'no_aux', 'precision',
                  'memory_format', 'grad_checkpointing', 'sync_bn']
ARCH_OPTIONS = {'genotype': 'genotype', 'filters': 'num_conv_filters', 'cells': 'num_cells',
                'stem_multiplier': 'stem_multiplier'}


def _help(text: str, key: str) -> str:
    value, source = RECIPE[key]
    if value is None:  # decided from the network: the source says how
        return f'{text} (default: {source})'
    return f'{text} (default: {value}' + (f'; {source})' if source else ')')


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/training.md')
    ap.add_argument('--data', required=True,
                    help='folder with train/ and val/, one folder per class; with --dataset cifar10, '
                         "the folder that holds (or gets, with --download) torchvision's "
                         'cifar-10-batches-py/')
    ap.add_argument('--dataset', choices=['folder', 'cifar10'], default=None,
                    help='folder (default): an ImageFolder tree. cifar10: CIFAR-10, validated on its '
                         'test batch, with the CIFAR protocol of DARTS and TF-Slim as defaults: '
                         + '; '.join(f'{k.replace("_", " ")} {v} ({src})' for k, (v, src) in
                                     CIFAR_RECIPE.items()))
    ap.add_argument('--valid-size', type=utils.int_at_least(1), metavar='N',
                    help='with --dataset cifar10: validate on N images held out of the training '
                         'batches (the same N for every run; PNAS held out 5,000), not on the '
                         'test batch, and train on the rest')
    ap.add_argument('--download', action='store_true',
                    help='with --dataset cifar10: download CIFAR-10 into --data when it is not there')
    ap.add_argument('--output', help='run folder (default with --resume: the folder of its file)')
    ap.add_argument('--weights', help='fine-tune this convert.py or train.py output (.pth or '
                                      '.safetensors), or IMAGENET1K_TF (Mobile: '
                                      'PNASNet5_Mobile_Weights.IMAGENET1K_TF), the official '
                                      'weights cached on first use; without it, train from scratch')
    ap.add_argument('--resume', metavar='FILE', help='continue the run of this last.pth')
    ap.add_argument('--force', action='store_true', help='start afresh in an --output that holds a run')
    add_network_args(ap)
    add_recipe_args(ap)
    add_speed_args(ap)
    return ap.parse_args(argv)


def add_network_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group('network (from scratch; with --weights the file\'s network is used)')
    g.add_argument('--genotype', help='a name in genotypes.py or a JSON file of genotypes.to_dict '
                                      'output (default: PNASNet)')
    g.add_argument('--preset', choices=['large', 'mobile', 'cifar'],
                   help='default: large; cifar (PNASNet-5 on CIFAR-10, N=3, F=48) with --dataset cifar10')
    g.add_argument('--filters', type=utils.int_at_least(1), help="num_conv_filters (default: the preset's)")
    g.add_argument('--cells', type=utils.int_at_least(1), help="num_cells (default: the preset's)")
    g.add_argument('--stem-multiplier', type=float, help="(default: the preset's)")
    g.add_argument('--image-size', type=utils.int_at_least(model_mod.MIN_IMAGE_SIZE),
                   help=_help('training and validation size', 'image_size'))
    g.add_argument('--freeze-body', action='store_true',
                   help='train the classifier alone, the body frozen in inference mode (as '
                        "TF-Hub's feature vector); the aux head is then not used")
    g.add_argument('--no-aux', action='store_true', help='train without the auxiliary head')


def add_recipe_args(ap: argparse.ArgumentParser) -> None:
    r = ap.add_argument_group('recipe (TF-Slim\'s for these nets unless said otherwise)')
    r.add_argument('--epochs', type=utils.int_at_least(1), help=_help('epochs', 'epochs'))
    r.add_argument('--batch-size', type=utils.int_at_least(1), help=_help('per process', 'batch_size'))
    r.add_argument('--optimizer', choices=['rmsprop', 'sgd'],
                   help=_help("rmsprop: TF's RMSProp, epsilon inside the root (see README); "
                              'sgd: SGD with Nesterov momentum', 'optimizer'))
    r.add_argument('--lr', type=float, help=_help('peak learning rate', 'lr'))
    r.add_argument('--momentum', type=float, help=_help('momentum', 'momentum'))
    r.add_argument('--rmsprop-decay', type=float, help=_help('RMSProp decay', 'rmsprop_decay'))
    r.add_argument('--rmsprop-eps', type=float, help=_help('RMSProp epsilon', 'rmsprop_eps'))
    r.add_argument('--schedule', choices=['exponential', 'cosine'],
                   help=_help('after the warmup: exponential staircase decay, or cosine to 0', 'schedule'))
    r.add_argument('--decay-rate', type=float, help=_help('exponential decay factor', 'decay_rate'))
    r.add_argument('--decay-epochs', type=float, help=_help('epochs per exponential decay', 'decay_epochs'))
    r.add_argument('--warmup-epochs', type=float, help=_help('epochs of linear warmup, raised every step', 'warmup_epochs'))
    r.add_argument('--weight-decay', type=float, help=_help('L2, kept off BN and biases', 'weight_decay'))
    r.add_argument('--label-smoothing', type=float, help=_help('label smoothing', 'label_smoothing'))
    r.add_argument('--aux-weight', type=float, help=_help('weight of the aux loss', 'aux_weight'))
    r.add_argument('--drop-path', type=float,
                   help=_help('final drop path rate; each cell\'s is scaled by its position, '
                              'and the whole ramped linearly over training', 'drop_path'))
    r.add_argument('--drop-path-fixed', action='store_true',
                   help='hold drop path at its final rate from the first step (TF-Hub\'s '
                        'fine-tuning note: path dropout is not rescheduled)')
    r.add_argument('--clip-grad', type=float, help=_help('clip gradients to this global norm', 'clip_grad'))
    r.add_argument('--ema', type=float, metavar='DECAY',
                   help=_help('keep an exponential moving average of the weights, with TF\'s '
                              'warmup min(decay, (1+n)/(10+n)); evaluated and saved', 'ema'))
    r.add_argument('--bn-momentum', type=float, help=_help('BatchNorm running-stat momentum', 'bn_momentum'))
    r.add_argument('--seed', type=int, help=_help('seed of the weights, shuffling and augmentation', 'seed'))


def add_speed_args(ap: argparse.ArgumentParser) -> None:
    s = ap.add_argument_group('speed and memory')
    s.add_argument('--device', choices=['auto', 'cuda', 'cpu'], default='auto')
    s.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default=None,
                   help='autocast precision (default fp32); fp16 uses a grad scaler. On a CPU '
                        'without native bf16 or fp16, train.py says so and runs fp32')
    s.add_argument('--memory-format', choices=['auto', 'channels_last', 'nchw'], default=None,
                   help='layout of activations and weights (default auto: channels_last on CUDA, '
                        'NCHW on the CPU, where oneDNN\'s channels_last weight gradients are not '
                        'bit-reproducible from run to run and a resumed run would drift)')
    s.add_argument('--grad-checkpointing', action='store_true',
                   help='recompute each cell in the backward pass (torch.utils.checkpoint): less memory')
    s.add_argument('--sync-bn', action='store_true', help='with torchrun on GPUs: synchronised BatchNorm')
    s.add_argument('--compile', action='store_true',
                   help='run the training step\'s forward and backward under torch.compile (the '
                        'usual gain on GPUs; it compiles for minutes first, and on a CPU it may not '
                        'pay: docs/performance.md)')
    s.add_argument('--workers', type=utils.int_at_least(0), default=min(4, os.cpu_count() or 1),
                   help='DataLoader workers (0: in the main process; needed for bit-exact resume '
                        'on the CPU together with --seed)')
    s.add_argument('--skip-bad', action='store_true',
                   help='skip images that cannot be decoded (counted in the log) instead of stopping')
    s.add_argument('--no-progress', action='store_true', help='no progress bars')


# --- defaults and resume ---------------------------------------------------------------------------

def preset_drop_path(config: model_mod.PNASNetConfig) -> float:
    mobile = model_mod.PNASNetConfig.mobile()
    same = (config.stem_multiplier, config.num_conv_filters, config.num_cells) == (
        mobile.stem_multiplier, mobile.num_conv_filters, mobile.num_cells)
    return 0.0 if same else 0.4


def fill_defaults(args) -> None:
    if getattr(args, 'dataset', None) is None:
        args.dataset = 'folder'
    if args.dataset == 'cifar10':
        for key, (value, _) in CIFAR_RECIPE.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    for key, (value, _) in RECIPE.items():
        if getattr(args, key, None) is None and value is not None:
            setattr(args, key, value)
    if args.precision is None:
        args.precision = 'fp32'


def saved_args(args) -> dict:
    return {k: getattr(args, k) for k in KEPT_ON_RESUME + ['epochs', 'data']}


def merge_resume_args(args, saved: dict, path: str) -> None:
    """A resumed run takes its settings from ``saved``; an option given again with another value
    is refused, except --epochs (a run may be lengthened)."""
    for key in KEPT_ON_RESUME:
        given = getattr(args, key, None)
        if key in ('drop_path_fixed', 'freeze_body', 'no_aux',
                   'grad_checkpointing', 'sync_bn'):
            given = given or None  # store_true flags: only "given" when set
        if given is not None and given != saved.get(key):
            flag = '--' + key.replace('_', '-')
            raise UserError(f'{path}: {flag} {given} differs from the run being resumed '
                            f'({saved.get(key)}); a resumed run keeps its settings (start a new '
                            f'one with --output)')
        setattr(args, key, saved.get(key))
    if args.epochs is None:
        args.epochs = saved['epochs']


def check_output(args) -> None:
    if args.output is None:
        raise UserError('--output DIR is needed (the folder for last.pth, best.pth, log.jsonl, curves.png)')
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UserError(f'--output {args.output}: a file, not a folder')
    if args.resume or args.force or not os.path.isdir(args.output):
        return
    held = [f for f in ('last.pth', 'best.pth', 'log.jsonl') if os.path.exists(os.path.join(args.output, f))]
    if held:
        raise UserError(f'--output {args.output}: already holds a run ({", ".join(held)}); continue it '
                        f'with --resume {os.path.join(args.output, "last.pth")}, or pass --force to '
                        f'start afresh over it')


def read_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f'--resume {path}: no such file')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # damaged or foreign files: one line, whatever the reason
        raise UserError(f'--resume {path}: not a train.py last.pth ({weights_io.load_error_summary(e)})') from None
    if not isinstance(state, dict) or state.get('kind') != STATE_KIND:
        raise UserError(f'--resume {path}: not a train.py last.pth (weights for fine-tuning go to --weights)')
    return state


# --- data ------------------------------------------------------------------------------------------

def find_split(root: str) -> Tuple[List[str], list, list]:
    """Class names, and (path, label) of train/ and val/, with one line for each way it is wrong."""
    if not os.path.isdir(root):
        raise UserError(f'--data {root}: no such folder')
    classes = {}
    for split in ('train', 'val'):
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise UserError(f'--data {root}: no {split}/ folder (expected {split}/<class>/<image> '
                            f'for both train/ and val/)')
        classes[split] = utils.class_folders(folder)
        if not classes[split]:
            raise UserError(f'{folder}: holds no class folders (one folder per class, images inside)')
        for c in classes[split]:
            if not utils.folder_images(os.path.join(folder, c)):
                raise UserError(f'{os.path.join(folder, c)}: an empty class folder (no images); '
                                f'add images or remove it from both train/ and val/')
    if classes['train'] != classes['val']:
        only_t = sorted(set(classes['train']) - set(classes['val']))
        only_v = sorted(set(classes['val']) - set(classes['train']))
        what = '; '.join(x for x in (f'only in train/: {only_t[:5]}' if only_t else '',
                                     f'only in val/: {only_v[:5]}' if only_v else '') if x)
        raise UserError(f'--data {root}: train/ and val/ hold different classes ({what}); '
                        f'give both the same class folders')
    names = classes['train']
    train, _, _ = utils.find_images(os.path.join(root, 'train'), names)
    val, _, _ = utils.find_images(os.path.join(root, 'val'), names)
    return names, train, val


def train_transform(size: int):
    """TF-Slim's inception ``preprocess_for_train`` with torchvision's transforms: a distorted
    crop of area 0.05-1 and aspect 3/4-4/3, resized bilinearly; a horizontal flip; light colour
    distortion (brightness and saturation in a random order, as its fast mode); [-1, 1]."""
    from torchvision.transforms import v2
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3),
                             interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=32 / 255, saturation=0.5),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5] * 3, [0.5] * 3),
    ])


class TrainDataset(torch.utils.data.Dataset):
    """Augmented training images; an undecodable one comes back with label -1 (and a blank
    image), for the loop to stop on or, with --skip-bad, to leave out and count."""

    def __init__(self, samples, size: int, transform=None):
        self.samples = list(samples)
        self.size = size
        self.transform = transform or train_transform(size)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from torchvision import tv_tensors
        path, label = self.samples[i]
        try:
            image = torch.from_numpy(utils.load_rgb(path).copy()).permute(2, 0, 1)
        except utils.BadImageError:
            return torch.zeros(3, self.size, self.size), -1, i
        return self.transform(tv_tensors.Image(image)).as_subclass(torch.Tensor), label, i


# --- optimisation ----------------------------------------------------------------------------------

class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow's ``RMSPropOptimizer`` computes it, which TF-Slim trained with:

        ms  <- ms + (g^2 - ms) * (1 - decay)        (ms starts at 1, not 0)
        mom <- momentum * mom + lr * g / sqrt(ms + eps)
        w   <- w - mom

    ``torch.optim.RMSprop`` instead adds eps outside the root (sqrt(v) + eps), starts v at 0 and
    applies lr after the momentum. With TF's eps of 1.0 those differ by far more than rounding,
    so this class keeps TF's order; tests/test_train.py checks it against TensorFlow."""

    CHUNK = 1 << 24  # elements updated at once: bounds the step's one temporary (64 MiB in fp32)

    def __init__(self, params, lr: float = 0.01, decay: float = 0.9, momentum: float = 0.9,
                 eps: float = 1.0):
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps))

    def _update(self, params: List[torch.Tensor], group: dict) -> None:
        """The formulas above over many tensors at once (torch._foreach_*), with one temporary."""
        grads = [p.grad for p in params]
        ms = [self.state[p]['ms'] for p in params]
        mom = [self.state[p]['mom'] for p in params]
        torch._foreach_mul_(ms, group['decay'])  # ms + (g^2 - ms)(1 - decay), rearranged
        torch._foreach_addcmul_(ms, grads, grads, value=1 - group['decay'])
        denom = torch._foreach_add(ms, group['eps'])
        torch._foreach_sqrt_(denom)
        torch._foreach_mul_(mom, group['momentum'])
        torch._foreach_addcdiv_(mom, grads, denom, value=group['lr'])
        torch._foreach_sub_(params, mom)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if not state:
                    state['ms'] = torch.ones_like(p, memory_format=torch.preserve_format)
                    state['mom'] = torch.zeros_like(p, memory_format=torch.preserve_format)
            for chunk in _chunks(params, self.CHUNK):
                self._update(chunk, group)
        return loss


def _chunks(tensors: List[torch.Tensor], limit: int):
    """Consecutive runs of ``tensors`` of at most ``limit`` elements (a larger tensor alone)."""
    run, size = [], 0
    for t in tensors:
        if run and size + t.numel() > limit:
            yield run
            run, size = [], 0
        run.append(t)
        size += t.numel()
    if run:
        yield run


def param_groups(net: nn.Module, weight_decay: float) -> List[dict]:
    """Conv and FC weights decay; BN scales and shifts and biases do not (TF-Slim regularises
    only the weights of its conv and fully connected layers)."""
    decay, no_decay = [], []
    for p in net.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    return [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]


def make_optimizer(groups: List[dict], args) -> torch.optim.Optimizer:
    # weight decay is added to the gradients before clipping, as TF adds the L2 loss to the
    # total loss; the optimizers themselves get none
    groups = [{'params': g['params'], 'l2': g['weight_decay']} for g in groups]
    if args.optimizer == 'rmsprop':
        return RMSpropTF(groups, lr=args.lr, decay=args.rmsprop_decay, momentum=args.momentum,
                         eps=args.rmsprop_eps)
    # Nesterov as TF-Slim's momentum option has it; CIFAR: plain momentum, as DARTS trains
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum,
                           nesterov=getattr(args, 'dataset', 'folder') != 'cifar10')


def lr_factor(step: int, steps_per_epoch: int, args) -> float:
    """The learning rate at ``step`` over the peak: linear warmup, then TF-Slim's staircase
    exponential decay (``decay_rate`` every ``decay_epochs``), or a cosine to 0."""
    warmup = int(round(args.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if args.schedule == 'exponential':
        decay_steps = max(1, int(steps_per_epoch * args.decay_epochs))
        return args.decay_rate ** ((step - warmup) // decay_steps)
    total = max(1, args.epochs * steps_per_epoch - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / total)))


def drop_path_rate(rate: float, step: int, total_steps: int, fixed: bool = False) -> float:
    """The network-wide drop path rate at ``step``: TF-Slim's ``current_ratio = step / total``
    ramp (or ``rate`` throughout with ``fixed``); each cell scales it by (cell + 1) / cells."""
    if fixed:
        return rate
    return rate * min(1.0, step / max(1, total_steps))


def losses(output, target: torch.Tensor, label_smoothing: float, aux_weight: float):
    """(total, main, aux) loss: cross entropy with label smoothing on the logits, plus
    ``aux_weight`` times the same on the aux logits when the network gave them."""
    logits, logits_aux = output if isinstance(output, tuple) else (output, None)
    main = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
    if logits_aux is None:
        return main, main, None
    aux = F.cross_entropy(logits_aux.float(), target, label_smoothing=label_smoothing)
    return main + aux_weight * aux, main, aux


def train_step(train_net: nn.Module, optimizer: torch.optim.Optimizer, scaler, x: torch.Tensor,
               y: torch.Tensor, args, keep: bool = True):
    """One step of the recipe: forward under autocast, loss with smoothing and the aux term,
    backward (through the grad scaler), L2 on the decayed groups, clipping by global norm and
    the optimizer's update. ``keep=False`` zeroes the loss (a step every DDP process must join
    without data of its own). Returns the (total, main, aux) losses. benchmark.py --train times
    this very function."""
    with runtime.autocast(x.device, args.precision):
        output = train_net(x)
    loss, main_loss, aux_loss = losses(output, y.clamp(min=0), args.label_smoothing, args.aux_weight)
    if not keep:
        loss = loss * 0.0
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    for g in optimizer.param_groups:
        with_grad = [p for p in g['params'] if p.grad is not None] if g.get('l2') else []
        if with_grad:
            torch._foreach_add_([p.grad for p in with_grad], [p.detach() for p in with_grad],
                                alpha=g['l2'])
    if args.clip_grad:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g['params']],
                                       args.clip_grad)
    scaler.step(optimizer)
    scaler.update()
    return loss, main_loss, aux_loss


class EMA:
    """An exponential moving average of every floating tensor of the state dict (weights and BN
    statistics), with TF's ``ExponentialMovingAverage(decay, num_updates)`` warmup."""

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(net).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        mine = self.module.state_dict()
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point:
                mine[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                mine[k].copy_(v)

    def state_dict(self) -> dict:
        return {'decay': self.decay, 'updates': self.updates, 'state_dict': self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state['decay'], state['updates']
        self.module.load_state_dict(state['state_dict'])


# --- building the network --------------------------------------------------------------------------

def set_bn_momentum(net: nn.Module, momentum: float) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def scratch_config(args, num_classes: int) -> model_mod.PNASNetConfig:
    try:
        genotype = genotypes_mod.load(args.genotype or 'PNASNet')
    except (ValueError, TypeError, OSError) as e:
        raise UserError(f'--genotype {args.genotype}: {e}') from None
    name = args.genotype or 'PNASNet'
    value = name if name in genotypes_mod.GENOTYPES else genotypes_mod.to_dict(genotype)
    overrides = {field: getattr(args, opt) for opt, field in ARCH_OPTIONS.items()
                 if opt != 'genotype' and getattr(args, opt) is not None}
    config = getattr(model_mod.PNASNetConfig, args.preset or 'large')(
        genotype=value, num_classes=num_classes, **overrides)
    return dataclasses.replace(config, image_size=args.image_size or config.image_size)


def network_for_run(args, class_names: List[str], log) -> Tuple[model_mod.NetworkImageNet, Optional[dict]]:
    """The network to train and, when fine-tuning, what the weights file said of itself."""
    n = len(class_names)
    want_aux = not args.no_aux and not args.freeze_body
    if args.freeze_body and not args.weights:
        raise UserError('--freeze-body trains the head of --weights; give the weights to fine-tune')
    if not args.weights:
        return scratch_network(args, n, want_aux, log), None
    try:
        obj = model_mod.read_weights(pretrained.weights_file(args.weights))
    except (model_mod.CheckpointError, pretrained.ConvertError) as e:
        raise UserError(str(e)) from None
    config, state_dict = obj['config'], dict(obj['state_dict'])
    check_arch_options(args, config)
    if args.preset is not None:
        log(f'--preset {args.preset}: ignored with --weights (the network is the file\'s)')
    size = args.image_size or config.image_size
    aux, state_dict = aux_head_for(args, config, size, state_dict, want_aux, log)
    config = dataclasses.replace(config, auxiliary=aux, image_size=size)
    net = model_mod.build_network(config)
    check_shapes(net, state_dict, args.weights)
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    fresh_ok = ('auxiliary_head.',)
    bad = [k for k in missing if not k.startswith(fresh_ok)] + list(unexpected)
    if bad:
        raise UserError(f'--weights {args.weights}: weights do not fit the network of its config '
                        f'({bad[:3]}); give a convert.py or train.py output of this port')
    if obj['class_names'] == class_names:
        log(f'classifier: kept, the weights were trained on these {n} classes')
    else:
        net.reset_classifier(n)
        log(f'classifier: new, for the {n} classes of --data (the weights had '
            f'{obj["config"].num_classes})' + (' ; aux classifier likewise' if aux else ''))
    log(f'fine-tuning {args.weights}: {name_of(config)}, F={config.num_conv_filters}, '
        f'{config.num_cells} cells, {size} px' + (', body frozen' if args.freeze_body else ''))
    return net, obj


def scratch_network(args, n: int, want_aux: bool, log) -> model_mod.NetworkImageNet:
    """The network of the options, fresh weights, ``n`` classes; the aux head where it fits."""
    config = scratch_config(args, n)
    aux = want_aux and config.aux_cell_index is not None
    if aux and model_mod.aux_kernel_size(config, config.image_size) < 1:
        log(f'aux head: does not fit {config.image_size} px; training without it')
        aux = False
    config = dataclasses.replace(config, auxiliary=aux)
    try:
        net = model_mod.build_network(config)
    except ValueError as e:
        raise UserError(str(e)) from None
    log(f'from scratch: {name_of(config)}, F={config.num_conv_filters}, {config.num_cells} cells, '
        f'{n} classes, {config.image_size} px')
    return net


def check_arch_options(args, config: model_mod.PNASNetConfig) -> None:
    """Architecture options given with --weights must name the file's network."""
    for opt, field in ARCH_OPTIONS.items():
        given = getattr(args, opt)
        if given is None:
            continue
        held = getattr(config, field)
        if opt == 'genotype':
            try:
                same = genotypes_mod.get(held) == genotypes_mod.load(given)
            except (ValueError, TypeError, OSError) as e:
                raise UserError(f'--genotype {given}: {e}') from None
        else:
            same = held == given
        if not same:
            raise UserError(f'--weights {args.weights}: holds a network with {field} '
                            f'{held if isinstance(held, (str, int, float)) else "(custom)"}, '
                            f'not --{opt.replace("_", "-")} {given}; drop that option to fine-tune '
                            f"the file's network, or train from scratch without --weights")


def aux_head_for(args, config: model_mod.PNASNetConfig, size: int, state_dict: dict,
                 want_aux: bool, log) -> Tuple[bool, dict]:
    """Whether fine-tuning at ``size`` trains an aux head, and the weights to load: the file's
    aux head where it fits, its last conv and BN fresh where the map size changed."""
    has_aux = any(k.startswith('auxiliary_head.') for k in state_dict)
    aux = want_aux and config.aux_cell_index is not None
    if aux:
        kernel = model_mod.aux_kernel_size(config, size)
        old = model_mod.aux_kernel_size(config, config.image_size) if config.image_size else kernel
        if kernel < 1:
            log(f'aux head: does not fit {size} px (the map left for its last conv is empty); '
                f'training without it')
            aux = False
        elif not has_aux:
            log(f'aux head: {args.weights} holds none; the whole aux head starts fresh')
        elif kernel != old:
            log(f'aux head: its last conv was {old}x{old} for {config.image_size} px; at {size} px '
                f'the map is {kernel}x{kernel}, so that conv and its BN start fresh (proj, its BN and '
                f'the FC are kept)')
            state_dict = {k: v for k, v in state_dict.items()
                          if not k.startswith(('auxiliary_head.conv.', 'auxiliary_head.bn1.'))}
        else:
            log('aux head: proj, conv and FC from the weights (aux BNs as the file has them: '
                'fresh where the release lacks them, see convert.py)')
    if not aux:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('auxiliary_head.')}
    return aux, state_dict


def check_shapes(net: nn.Module, state_dict: dict, path: str) -> None:
    own = net.state_dict()
    for k, v in state_dict.items():
        if k in own and own[k].shape != v.shape:
            raise UserError(f'--weights {path}: {k} is {list(v.shape)} in the file but '
                            f'{list(own[k].shape)} in its network; weights of another architecture')


def name_of(config) -> str:
    return config.genotype if isinstance(config.genotype, str) else 'custom genotype'


def freeze_body(net: model_mod.NetworkImageNet) -> None:
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith('classifier.'))


def set_train_mode(net: model_mod.NetworkImageNet, frozen: bool) -> None:
    """Training mode, or with a frozen body: the body in inference mode (its BN statistics and
    weights untouched, no drop path) and only the head's dropout active."""
    if frozen:
        net.eval()
        net.dropout.train()
    else:
        net.train()


# --- the run ---------------------------------------------------------------------------------------

def rng_state() -> dict:
    np_state = np.random.get_state()
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'python': random.getstate(),
            'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': int(np_state[2]),
                      'has_gauss': int(np_state[3]), 'cached': float(np_state[4])}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['cached']))


def unwrap(net: nn.Module) -> model_mod.NetworkImageNet:
    net = getattr(net, '_orig_mod', net)  # torch.compile's wrapper
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def weights_payload(net: model_mod.NetworkImageNet, class_names, source: dict) -> dict:
    """best.pth: what model.load_pretrained and main.py --weights read, with the class names."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    return {'config': net.config.to_dict(), 'state_dict': state, 'class_names': list(class_names),
            'source': source}


def save(obj, path: str) -> None:
    utils.write_atomic(path, lambda f: torch.save(obj, f))


def write_log(records: List[dict], path: str) -> None:
    text = ''.join(json.dumps(r) + '\n' for r in records)
    utils.write_atomic(path, lambda f: f.write(text.encode()))


def plot_curves(records: List[dict], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    epochs = [r['epoch'] for r in records]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [r['train_loss'] for r in records], 'o-', label='train loss')
    a.plot(epochs, [r['val_loss'] for r in records], 'o-', label='val loss')
    a.set_xlabel('epoch')
    a.set_ylabel('loss')
    a.legend()
    b.plot(epochs, [r['val_prec1'] for r in records], 'o-', label='val Prec@1')
    b.plot(epochs, [r['val_prec5'] for r in records], 'o-', label='val Prec@5')
    if any(r.get('ema_val_prec1') is not None for r in records):
        b.plot(epochs, [r.get('ema_val_prec1') for r in records], 'o--', label='EMA val Prec@1')
    b.set_xlabel('epoch')
    b.set_ylabel('accuracy')
    b.set_ylim(0, 1)
    b.legend()
    fig.tight_layout()

    def write(f):
        fig.savefig(f, format='png', dpi=100)
    utils.write_atomic(path, write)
    plt.close(fig)


class Run:
    """What one process of a training run holds: the settings, the network (``net`` as built,
    ``model`` the module whose weights are saved, ``train_net`` what the step runs: DDP and
    torch.compile wrap it), the optimizer and its companions, the data, and the progress."""

    def __init__(self, args, device, rank: int, world: int):
        self.args, self.device, self.rank, self.world = args, device, rank, world
        self.start_epoch, self.step, self.records, self.best = 0, 0, [], None

    def log(self, message: str) -> None:
        if self.rank == 0:
            print(message, flush=True)


def resolve_memory_format(choice, device: torch.device) -> torch.memory_format:
    """--memory-format: auto is channels_last on CUDA and NCHW elsewhere."""
    if choice in (None, 'auto'):
        choice = 'channels_last' if device.type == 'cuda' else 'nchw'
    return torch.channels_last if choice == 'channels_last' else torch.contiguous_format


def validate(net: nn.Module, loader, run: Run) -> dict:
    """Prec@1, Prec@5 and the loss (without smoothing) over this process's share of val, summed
    over every process; images that cannot be decoded are left out and counted."""
    net.eval()
    totals = torch.zeros(5, dtype=torch.float64)  # correct1, correct5, images, loss sum, bad
    memory_format = resolve_memory_format(run.args.memory_format, run.device)
    with torch.inference_mode():
        for x, label, _ in loader:
            ok = label >= 0
            totals[4] += int((~ok).sum())
            if not bool(ok.any()):
                continue
            x = x[ok].to(run.device).contiguous(memory_format=memory_format)
            y = label[ok].to(run.device)
            with runtime.autocast(run.device, run.args.precision):
                logits = net(x).float()
            c1, c5 = utils.topk_correct(logits, y, (1, min(5, logits.shape[1])))
            totals[0] += c1
            totals[1] += c5
            totals[2] += len(y)
            totals[3] += float(F.cross_entropy(logits, y, reduction='sum'))
    if run.world > 1:
        t = totals.to(run.device)
        dist.all_reduce(t)
        totals = t.cpu()
    n = max(float(totals[2]), 1.0)
    return {'prec1': float(totals[0]) / n, 'prec5': float(totals[1]) / n,
            'loss': float(totals[3]) / n, 'images': int(totals[2]), 'bad': int(totals[4])}


def read_cifar(args, rank: int, world: int):
    """cifar.load for every process; rank 0 alone downloads, the others wait for it."""
    def load(download: bool):
        try:
            return cifar.load(args.data, download)
        except cifar.CifarError as e:
            raise UserError(str(e)) from None
    if world == 1:
        return load(args.download)
    data = load(args.download) if rank == 0 else None
    dist.barrier()
    return data if rank == 0 else load(False)


def bad_image_error(dataset, index: int) -> UserError:
    path = dataset.samples[index][0]
    return UserError(f'{path}: cannot decode the image; pass --skip-bad to skip such images '
                     f'(they are counted in log.jsonl)')


def run_training(args) -> int:
    device, rank, world = runtime.start_processes(args.device)
    try:
        return _train(args, device, rank, world)
    finally:
        runtime.end_processes()


def _train(args, device, rank: int, world: int) -> int:
    run = Run(args, device, rank, world)
    state = prepare(run)
    run.class_names, data = read_data(run, state)
    build(run, state)
    make_loaders(run, data)
    if state is not None:
        restore(run, state)
    wrap(run)
    run.log(f'{len(run.train_set)} training and {len(run.val_set)} val images, '
            f'{len(run.class_names)} classes; {args.epochs} epochs of {run.steps_per_epoch} steps '
            f'(batch {run.batch} x {world}); {args.optimizer} lr {args.lr:g}, {args.schedule}; '
            f'drop path {args.drop_path:g}{" (fixed)" if args.drop_path_fixed else " (ramped)"}; '
            f'precision {args.precision}')
    os.makedirs(args.output, exist_ok=True)
    for epoch in range(run.start_epoch, args.epochs):
        sums, skipped, seconds = train_one_epoch(run, epoch)
        val, ema_val = evaluate(run)
        record = epoch_record(run, epoch, sums, skipped, seconds, val, ema_val)
        run.records.append(record)
        save_checkpoint(run, epoch, val, ema_val)
        if ema_val is not None:
            run.log(f'  EMA: val Prec@1 {ema_val["prec1"]:.3f}  Prec@5 {ema_val["prec5"]:.3f}')
        best = run.best
        run.log(f'  best: epoch {best["epoch"]} ({best["weights"]}), val Prec@1 {best["prec1"]:.3f}  '
                f'Prec@5 {best["prec5"]:.3f} -> {os.path.join(args.output, "best.pth")}')
        run.log(f'Epoch {epoch + 1}/{args.epochs}  train loss {record["train_loss"]:.4f}  '
                f'val Prec@1 {val["prec1"]:.3f}  Prec@5 {val["prec5"]:.3f}')
    return 0


def prepare(run: Run) -> Optional[dict]:
    """The settings of the run, completed (from the run being resumed, the recipe's defaults
    and what the device can do); the state being resumed, or None."""
    args, device = run.args, run.device
    # denormal floats, which a fresh head's first steps can leave everywhere in a converted
    # body, slow a CPU's float units by orders of magnitude; TF flushes them to zero by default
    torch.set_flush_denormal(True)
    if device.type == 'cpu':
        utils.tune_cpu_allocator()  # as main.py: fewer page faults on every step's buffers
    state = None
    if args.resume:
        state = read_state(args.resume)
        merge_resume_args(args, state['args'], args.resume)
        args.output = args.output or os.path.dirname(os.path.abspath(args.resume))
    fill_defaults(args)
    check_output(args)
    if args.valid_size and args.dataset != 'cifar10':
        raise UserError('--valid-size holds images out of CIFAR-10\'s training batches; it needs '
                        '--dataset cifar10 (a folder tree has its own val/)')
    if args.sync_bn and device.type != 'cuda':
        raise UserError('--sync-bn synchronises BatchNorm across GPUs; it needs --device cuda and torchrun')
    args.precision = runtime.resolve_precision(
        device, args.precision, warn=(lambda m: print(f'train.py: warning: {m}', file=sys.stderr))
        if run.rank == 0 else (lambda m: None))
    if device.type == 'cuda':
        runtime.setup_cuda(False)
    return state


def read_data(run: Run, state: Optional[dict]) -> Tuple[List[str], tuple]:
    """The class names and what make_loaders needs: CIFAR-10's arrays, or the image folders'
    samples; a resumed run must see the classes it was trained on."""
    args = run.args
    if args.dataset == 'cifar10':
        data = read_cifar(args, run.rank, run.world)
        class_names = data[0]
    else:
        class_names, train_samples, val_samples = find_split(args.data)
        data = (class_names, train_samples, val_samples)
    if state is not None and state['class_names'] != class_names:
        raise UserError(f'--resume {args.resume}: the run was trained on {len(state["class_names"])} '
                        f'classes ({", ".join(state["class_names"][:4])}, ...), not the {len(class_names)} '
                        f'of --data {args.data}; resume it with its own data')
    return class_names, data


def build(run: Run, state: Optional[dict]) -> None:
    """The network (seeded), on the device, and its optimizer, schedule, scaler and EMA."""
    args = run.args
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed % 2 ** 32)
    net, _ = network_for_run(args, run.class_names, run.log if state is None else (lambda m: None))
    if state is not None:
        saved_config = model_mod.PNASNetConfig.from_dict(dict(state['config']))
        if saved_config != net.config:
            raise UserError(f'--resume {args.resume}: its network config differs from the one these '
                            f'options build; resume with the options of that run')
    if args.drop_path is None:
        args.drop_path = preset_drop_path(net.config)
    set_bn_momentum(net, args.bn_momentum)
    if args.freeze_body:
        freeze_body(net)
    if args.grad_checkpointing:
        net.set_grad_checkpointing(True)
    run.memory_format = resolve_memory_format(args.memory_format, run.device)
    run.net = net.to(run.device, memory_format=run.memory_format)
    run.optimizer = make_optimizer(param_groups(run.net, args.weight_decay), args)
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=args.precision == 'fp16')
    run.ema = EMA(run.net, args.ema) if args.ema else None


def cifar_sets(args, data: tuple):
    """CIFAR-10's training set and what it is validated on: the test batch, or with --valid-size
    N images held out of the training batches."""
    if not args.valid_size:
        return cifar.CifarDataset(data[1], data[2], train=True), cifar.CifarDataset(data[3], data[4], train=False)
    if args.valid_size > len(data[2]) - 2:
        raise UserError(f'--valid-size {args.valid_size}: --data {args.data} has {len(data[2])} training '
                        f'images; hold out fewer')
    kept, held = cifar.holdout(len(data[2]), args.valid_size)
    return (cifar.CifarDataset(data[1][kept], data[2][kept], train=True),
            cifar.CifarDataset(data[1][held], data[2][held], train=False))


def make_loaders(run: Run, data: tuple) -> None:
    """The datasets, this process's sampler and share of val, the batch size and the schedule
    that the number of steps decides."""
    args, size = run.args, run.net.config.image_size
    if args.dataset == 'cifar10':
        if size != 32:
            raise UserError(f'--dataset cifar10: the images are 32 px, but the network is built for '
                            f'{size} px; leave --image-size out, or give 32')
        run.train_set, run.val_set = cifar_sets(args, data)
    else:
        run.train_set = TrainDataset(data[1], size)
        run.val_set = utils.EvalDataset(data[2], size, 'numpy', skip_bad=True)
    per_rank = len(run.train_set) // run.world
    if per_rank < 2:
        raise UserError(f'--data {args.data}: {len(run.train_set)} training images; each of the '
                        f'{run.world} processes needs at least 2 (BatchNorm needs 2 images a batch)')
    run.batch = min(args.batch_size, per_rank)
    run.sampler = torch.utils.data.distributed.DistributedSampler(
        run.train_set, num_replicas=run.world, rank=run.rank, shuffle=True, seed=args.seed,
        drop_last=True)
    run.val_part = torch.utils.data.Subset(run.val_set, list(range(run.rank, len(run.val_set), run.world)))
    run.steps_per_epoch = steps = per_rank // run.batch
    run.total_steps = args.epochs * steps
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(
        run.optimizer, lambda step: lr_factor(step, steps, args))


def restore(run: Run, state: dict) -> None:
    """The resumed run's weights, optimizer, schedule, scaler, EMA, progress and RNG."""
    args = run.args
    run.net.load_state_dict(state['model'])
    run.optimizer.load_state_dict(state['optimizer'])
    run.scheduler.load_state_dict(state['scheduler'])
    run.scaler.load_state_dict(state['scaler'])
    if run.ema is not None:
        run.ema.load_state_dict(state['ema'])
    run.start_epoch, run.step = state['epoch'], state['step']
    run.records, run.best = list(state['log']), state['best']
    if run.start_epoch >= args.epochs:
        raise UserError(f'--resume {args.resume}: the run already did its {run.start_epoch} epochs; '
                        f'pass a larger --epochs to go on')
    set_rng_state(state['rng'])
    run.log(f'resuming {args.resume} after epoch {run.start_epoch}/{args.epochs}')


def wrap(run: Run) -> None:
    """SyncBatchNorm, DDP and torch.compile around the network, as asked: ``train_net``."""
    args, net = run.args, run.net
    if args.sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    train_net = net
    if run.world > 1:
        train_net = nn.parallel.DistributedDataParallel(
            net, device_ids=[run.device.index] if run.device.type == 'cuda' else None)
    if args.compile:
        train_net = torch.compile(train_net)
    run.train_net, run.model = train_net, unwrap(train_net)


def train_one_epoch(run: Run, epoch: int) -> Tuple[torch.Tensor, int, float]:
    """One pass over this process's share of the training set: (loss, main loss, aux loss and
    images, summed over every process; images skipped as undecodable; seconds)."""
    args, device, model = run.args, run.device, run.model
    run.sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
    loader = torch.utils.data.DataLoader(
        run.train_set, batch_size=run.batch, sampler=run.sampler, num_workers=args.workers,
        drop_last=True, pin_memory=device.type == 'cuda', generator=generator)
    set_train_mode(model, args.freeze_body)
    sums = torch.zeros(4, dtype=torch.float64)  # loss, main loss, aux loss, images
    skipped = 0
    bar = None
    if run.rank == 0 and not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=run.steps_per_epoch, desc=f'epoch {epoch + 1}/{args.epochs}', unit='step',
                   dynamic_ncols=True, file=sys.stderr)
    t0 = time.perf_counter()
    for x, label, index in loader:
        ok = label >= 0
        if not bool(ok.all()):
            if not args.skip_bad:
                raise bad_image_error(run.train_set, int(index[~ok][0]))
            skipped += int((~ok).sum())
            if run.world == 1 and int(ok.sum()) < 2:
                continue  # BatchNorm needs two images; the batch is left out
            if int(ok.sum()) >= 2:
                x, label = x[ok], label[ok]
        model.drop_path_prob = drop_path_rate(args.drop_path, run.step, run.total_steps,
                                              args.drop_path_fixed)
        x = x.to(device, non_blocking=True).contiguous(memory_format=run.memory_format)
        y = label.to(device, non_blocking=True)
        # under DDP every process must take part in each step: a batch with fewer than two
        # good images contributes a zero loss
        loss, main_loss, aux_loss = train_step(run.train_net, run.optimizer, run.scaler, x, y, args,
                                               keep=int((y >= 0).sum()) == len(y))
        run.scheduler.step()
        run.step += 1
        if run.ema is not None:
            run.ema.update(model)
        n = int((y >= 0).sum()) if int((y >= 0).sum()) >= 2 else 0
        sums += torch.tensor([float(loss.detach()) * n, float(main_loss.detach()) * n,
                              float(aux_loss.detach()) * n if aux_loss is not None else 0.0, n],
                             dtype=torch.float64)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f'loss {sums[0] / max(sums[3], 1):.4f} '
                                f'lr {run.optimizer.param_groups[0]["lr"]:.3g}')
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    if run.world > 1:
        t = torch.cat([sums, torch.tensor([skipped], dtype=torch.float64)]).to(device)
        dist.all_reduce(t)
        sums, skipped = t[:4].cpu(), int(t[4])
    return sums, skipped, seconds


def evaluate(run: Run) -> Tuple[dict, Optional[dict]]:
    """The model on val, and its EMA where there is one (``validate``'s figures)."""
    loader = torch.utils.data.DataLoader(run.val_part, batch_size=run.batch, shuffle=False,
                                         num_workers=run.args.workers)
    val = validate(run.model, loader, run)
    if val['bad'] and not run.args.skip_bad:
        bad = next(i for i in range(len(run.val_set)) if not _decodes(run.val_set.samples[i][0]))
        raise UserError(f'{run.val_set.samples[bad][0]}: cannot decode the image; pass --skip-bad '
                        f'to skip such images (they are counted in log.jsonl)')
    return val, validate(run.ema.module, loader, run) if run.ema is not None else None


def epoch_record(run: Run, epoch: int, sums: torch.Tensor, skipped: int, seconds: float,
                 val: dict, ema_val: Optional[dict]) -> dict:
    """The epoch's line of log.jsonl."""
    args, model = run.args, run.model
    images = float(sums[3])
    aux = model.auxiliary_head is not None and not args.freeze_body
    return {'epoch': epoch + 1, 'train_loss': float(sums[0]) / max(images, 1),
            'train_loss_main': float(sums[1]) / max(images, 1),
            'train_loss_aux': float(sums[2]) / max(images, 1) if aux else None,
            'lr': run.optimizer.param_groups[0]['lr'],
            'drop_path': model.drop_path_prob if not args.freeze_body else 0.0,
            'val_loss': val['loss'], 'val_prec1': val['prec1'], 'val_prec5': val['prec5'],
            'ema_val_prec1': ema_val['prec1'] if ema_val else None,
            'ema_val_prec5': ema_val['prec5'] if ema_val else None,
            'images_per_second': images / seconds if seconds > 0 else None,
            'train_images': int(images), 'skipped_bad': skipped + val['bad'], 'seconds': seconds}


def save_checkpoint(run: Run, epoch: int, val: dict, ema_val: Optional[dict]) -> None:
    """best.pth where the model (or its EMA) beat the best so far, log.jsonl, curves.png and
    last.pth (what --resume reads), written by rank 0; every process learns the best."""
    args, model = run.args, run.model
    candidates = [('model', model, val)] + ([('ema', run.ema.module, ema_val)] if run.ema else [])
    kind, best_net, best_val = max(candidates, key=lambda c: c[2]['prec1'])
    if run.rank == 0:
        if run.best is None or best_val['prec1'] > run.best['prec1']:
            run.best = {'epoch': epoch + 1, 'weights': kind, 'prec1': best_val['prec1'],
                        'prec5': best_val['prec5']}
            src = {'trained_by': 'train.py', 'epoch': epoch + 1, 'weights': kind,
                   'val_prec1': best_val['prec1'], 'val_prec5': best_val['prec5'],
                   'data': os.path.abspath(args.data), 'image_size': model.config.image_size,
                   'from': args.weights}
            save(weights_payload(best_net, run.class_names, src), os.path.join(args.output, 'best.pth'))
        write_log(run.records, os.path.join(args.output, 'log.jsonl'))
        plot_curves(run.records, os.path.join(args.output, 'curves.png'))
        save({'kind': STATE_KIND, 'args': saved_args(args), 'config': model.config.to_dict(),
              'class_names': run.class_names, 'epoch': epoch + 1, 'step': run.step,
              'model': model.state_dict(), 'optimizer': run.optimizer.state_dict(),
              'scheduler': run.scheduler.state_dict(), 'scaler': run.scaler.state_dict(),
              'ema': run.ema.state_dict() if run.ema is not None else None, 'best': run.best,
              'log': run.records, 'rng': rng_state()}, os.path.join(args.output, 'last.pth'))
    if run.world > 1:
        best = [run.best]
        dist.broadcast_object_list(best, src=0)
        run.best = best[0]


def _decodes(path: str) -> bool:
    try:
        utils.load_rgb(path)
        return True
    except utils.BadImageError:
        return False


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run_training(args)
    except UserError as e:
        print(f'train.py: error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        out = args.output or '<output>'
        print(f'\ntrain.py: interrupted; {os.path.join(out, "last.pth")} holds the last finished '
              f'epoch: go on with --resume {os.path.join(out, "last.pth")}', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
