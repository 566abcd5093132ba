"""The official weights as torchvision describes weights: ``PNASNet5_Large_Weights.IMAGENET1K_TF``
and ``PNASNet5_Mobile_Weights.IMAGENET1K_TF``, each with where the TF-Slim release comes from
(``url``; ``PNASNET_LARGE_URL`` / ``PNASNET_MOBILE_URL`` name a mirror), what it is (``meta``: the
published accuracy, size, cost and the 1001 categories) and its preprocessing (``transforms()``:
TF-Slim's evaluation preprocessing as a transform, the exact tensor ``main.py`` feeds the network).
``cached_weights`` fetches, checks and converts the release on first use and caches the result in
torch.hub's checkpoint folder; hubconf's entry points, timm's ``pretrained=True`` and
``--weights IMAGENET1K_TF`` of main.py and train.py read it from there.

    from hubconf import PNASNet5_Large_Weights
    weights = PNASNet5_Large_Weights.IMAGENET1K_TF
    x = weights.transforms()(PIL.Image.open('cat.jpg'))    # [3, 331, 331], as main.py has it
    weights.meta['categories'][logits.argmax()]             # 'background' at 0, then ImageNet's

More: docs/interop.md
"""
import contextlib
import enum
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

import tf_weights
import utils
import weights_io
from tf_weights import ConvertError

OFFICIAL_URLS = {
    'large': 'http://download.tensorflow.org/models/pnasnet-5_large_2017_12_13.tar.gz',
    'mobile': 'http://download.tensorflow.org/models/pnasnet-5_mobile_2017_12_13.tar.gz',
}
URL_VARIABLES = {'large': 'PNASNET_LARGE_URL', 'mobile': 'PNASNET_MOBILE_URL'}
RELEASE_VARIABLES = {'large': 'pnasnet5_large_331.vars.tsv', 'mobile': 'pnasnet5_mobile_224.vars.tsv'}
CACHE_NAMES = {'large': 'pnasnet5large_tf_in1k', 'mobile': 'pnasnet5mobile_tf_in1k'}
SOURCES = ('tf', 'timm')  # the TF-Slim release, or timm's copy of Large on the Hugging Face Hub


class TFSlimEval:
    """TF-Slim's inception ``preprocess_for_eval`` as a transform: a PIL image (any mode; taken
    as RGB as torchvision's ImageFolder takes it) or a uint8 tensor [C, H, W] (torchvision's
    layout; one channel is grey, a fourth is dropped) in, float32 [3, size, size] in [-1, 1] out,
    bit for bit ``utils.preprocess_for_eval``: central crop 0.875, TF's legacy bilinear resize."""

    def __init__(self, size: int, central_fraction: float = 0.875):
        self.size, self.central_fraction = size, central_fraction

    def __call__(self, image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3, 4):
                raise ValueError(f'expected a uint8 image tensor [C, H, W] with 1, 3 or 4 channels, '
                                 f'got {image.dtype} {list(image.shape)}')
            pixels = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
            pixels = pixels.permute(1, 2, 0).cpu().numpy()
        else:
            pixels = np.asarray(image.convert('RGB'), dtype=np.uint8)
        x = utils.preprocess_for_eval(np.ascontiguousarray(pixels), self.size, self.size,
                                      central_fraction=self.central_fraction)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(size={self.size}, central_fraction={self.central_fraction}, '
                f'resize=TF legacy bilinear, range=[-1, 1])')


def categories():
    """The 1001 output classes: 'background' at logit 0, then ImageNet's in wnid order."""
    return ['background'] + [name for _, name in utils.read_class_names()]


@dataclass(frozen=True)
class Weights:
    """One set of weights, as torchvision's ``Weights``: its source, transform and meta."""
    preset: str
    transforms: Callable[[], TFSlimEval]
    meta: dict = field(compare=False)

    @property
    def url(self) -> str:
        """The TF-Slim archive: ``PNASNET_LARGE_URL`` / ``PNASNET_MOBILE_URL`` where set (a lab's
        mirror, ``http(s)://`` or ``file://``), else the official one."""
        return os.environ.get(URL_VARIABLES[self.preset]) or OFFICIAL_URLS[self.preset]


def _meta(size: int, params: int, mult_adds: float, top1: float, top5: float) -> dict:
    return {'num_params': params, 'min_size': (size, size), 'input_size': (3, size, size),
            'num_classes': 1001, 'label_offset': 1, 'categories': None,
            '_metrics': {'ImageNet-1K': {'acc@1': top1, 'acc@5': top5}},
            '_ops': mult_adds, '_ops_unit': 'G multiply-adds per image',
            'source': 'TF-Slim (tensorflow/models research/slim), converted and checked by convert.py',
            '_docs': 'Published ImageNet accuracy at the input size, single crop, with TF-Slim\'s '
                     'evaluation preprocessing (transforms()); num_params excludes the aux head.'}


class _WeightsEnum(enum.Enum):
    """torchvision's WeightsEnum convention: ``E.IMAGENET1K_TF.url / .transforms() / .meta``,
    ``E.DEFAULT``, and ``E.verify('IMAGENET1K_TF')`` for a name or member."""

    @classmethod
    def verify(cls, value):
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            name = value.split('.')[-1]
            if name in cls.__members__:
                return cls.__members__[name]
        raise ValueError(f'{value!r} is not one of {cls.__name__}: '
                         f'{", ".join(cls.__members__)}')

    @property
    def url(self) -> str:
        return self.value.url

    @property
    def transforms(self) -> Callable[[], TFSlimEval]:
        return self.value.transforms

    @property
    def meta(self) -> dict:
        meta = dict(self.value.meta)
        meta['categories'] = categories()
        return meta

    def file(self, preset=None, source: str = 'tf', log=None) -> str:
        """The weights file: the cache, fetched and converted on first use (``cached_weights``);
        ``preset`` ('large' or 'mobile') is the network it must be for."""
        if preset is not None and preset != self.value.preset:
            raise ValueError(f'{type(self).__name__}.{self.name} holds PNASNet-5 '
                             f'{self.value.preset.capitalize()}, not {preset.capitalize()}')
        return cached_weights(self, log or _say, source)


class PNASNet5_Large_Weights(_WeightsEnum):
    IMAGENET1K_TF = Weights('large', lambda: TFSlimEval(331), _meta(331, 86_061_989, 25.0, 82.9, 96.2))
    DEFAULT = IMAGENET1K_TF


class PNASNet5_Mobile_Weights(_WeightsEnum):
    IMAGENET1K_TF = Weights('mobile', lambda: TFSlimEval(224), _meta(224, 5_066_202, 0.588, 74.2, 91.9))
    DEFAULT = IMAGENET1K_TF


WEIGHTS = {'large': PNASNet5_Large_Weights, 'mobile': PNASNet5_Mobile_Weights}


# --- fetched, converted and cached on first use -------------------------------------------------------

def _say(message: str) -> None:
    print(f'pnasnet: {message}', file=sys.stderr, flush=True)


def cache_path(weights, source: str = 'tf') -> str:
    """Where the converted weights live: torch.hub's checkpoint folder (``TORCH_HOME`` moves it),
    as safetensors with the config in its metadata; the archive's sha256 beside it (.json)."""
    name = CACHE_NAMES[weights.value.preset]
    return os.path.join(torch.hub.get_dir(), 'checkpoints',
                        (name if source == 'tf' else name.replace('_tf_', '_timm_')) + '.safetensors')


def cached_weights(weights, log=_say, source: str = 'tf') -> str:
    """The path of the converted official weights: read from the cache when it holds them whole
    (no TensorFlow then), else downloaded from ``weights.url``, checked against the release's
    variable names, converted with both of convert.py's checks and written there atomically.
    Processes asking at once convert once: the others wait on a file lock and read the cache.
    A damaged cache file is said in one line and made again; errors are ConvertError, one line.
    ``source='timm'``: timm's copy of Large from the Hugging Face Hub instead of the release,
    checked against timm's own model; it lacks the aux head and the background logit (1000
    classes), and timm has no Mobile."""
    weights = _member(weights)
    if source not in SOURCES:
        raise ConvertError(f'source {source!r}: one of {", ".join(SOURCES)}')
    if source == 'timm' and weights.value.preset != 'large':
        raise ConvertError('source \'timm\': timm has PNASNet-5 Large only; Mobile comes from the '
                           'TF-Slim release (source \'tf\')')
    path = cache_path(weights, source)
    if _cache_whole(path, log):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _locked(path + '.lock', log):
        if not _cache_whole(path, log):  # another process may have made it meanwhile
            (_build if source == 'tf' else _build_from_timm)(weights, path, log)
    return path


def _member(weights, preset: Optional[str] = None):
    """The weights object ``weights`` names: a member as it is; 'PNASNet5_Mobile_Weights.X' its
    Enum's; a bare 'IMAGENET1K_TF' or 'DEFAULT' the one of ``preset`` (default Large)."""
    if isinstance(weights, _WeightsEnum):
        return weights
    for enum_cls in WEIGHTS.values():
        if isinstance(weights, str) and weights.split('.')[0] == enum_cls.__name__:
            return enum_cls.verify(weights)
    return WEIGHTS[preset or 'large'].verify(weights)


def _cache_whole(path: str, log) -> bool:
    """Whether ``path`` is a complete cache file; a damaged one is said and removed."""
    if not os.path.exists(path):
        return False
    try:
        from safetensors import safe_open
        with safe_open(path, framework='pt', device='cpu') as f:
            if 'config' not in (f.metadata() or {}) or not list(f.keys()):
                raise ValueError('not a cache file of this port')
        return True
    except Exception as e:  # safetensors' own errors for truncated or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log(f'{path}: damaged ({first}); converting again')
        os.remove(path)
        return False


@contextlib.contextmanager
def _locked(path: str, log):
    """An exclusive lock on ``path`` (a file beside the cache), held for the body."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks: each process converts, the cache is written atomically
        yield
        return
    with open(path, 'a') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f'another process is making {path[:-len(".lock")]}: waiting for it')
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(weights, path: str, log) -> None:
    preset, url = weights.value.preset, weights.url
    folder = os.path.dirname(path)
    name = os.path.basename(urllib.parse.urlparse(url).path) or f'pnasnet-5_{preset}.tar.gz'
    archive = os.path.join(folder, name)
    if not os.path.isfile(archive):  # the download shows its own progress bar
        tf_weights.download(url, archive, manual=(
            f'place the archive there by hand ({archive}), or name a mirror in '
            f'{URL_VARIABLES[preset]} (http(s):// or file://)'))
    digest = _sha256(archive)
    workdir = tempfile.mkdtemp(prefix='pnasnet_pretrained_')
    try:
        try:
            prefix = tf_weights.resolve_checkpoint(archive, workdir)
            tensors = tf_weights.read_checkpoint(prefix)
            _check_release_names(tensors, preset, archive)
        except ConvertError:
            os.remove(archive)  # a broken or foreign download is not kept: the next try fetches again
            raise
        log(f'converting {archive} (both of convert.py\'s checks, against TensorFlow)')
        net, report = tf_weights.convert_checkpoint(prefix, log=lambda *a: None, tensors=tensors)
        payload = tf_weights.weights_payload(net, report, prefix)
        payload['source'].update({'url': url, 'archive_sha256': digest})
        utils.write_atomic(path, lambda f: weights_io.write_weights(payload, path, f))
        utils.save_json({'url': url, 'archive': name, 'archive_sha256': digest,
                         'diffs_vs_tf': report.get('diffs')}, path[:-len('.safetensors')] + '.json')
        log(f'cached {path}')
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def timm_state_dict() -> dict:
    """timm's ``pnasnet5large.tf_in1k`` weights, which timm fetches from the Hugging Face Hub."""
    try:
        import timm
        return timm.create_model('pnasnet5large.tf_in1k', pretrained=True).state_dict()
    except ImportError:
        raise ConvertError('source \'timm\' needs timm (pip install -r requirements.txt)') from None
    except Exception as e:  # the Hub's and the network's errors alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f'cannot fetch timm\'s pnasnet5large.tf_in1k from the Hugging Face Hub '
                           f'({first}); use the TF-Slim release (source \'tf\') or '
                           f'convert.py --from-timm FILE') from None


def _build_from_timm(weights, path: str, log) -> None:
    import timm_weights
    state = timm_state_dict()
    log('converting timm\'s pnasnet5large.tf_in1k (checked against timm\'s model); it has no aux '
        'head and 1000 classes, no background logit')
    net, report = timm_weights.network_from_timm(state, 'timm pnasnet5large.tf_in1k', log=lambda *a: None)
    payload = timm_weights.weights_payload(net, report, 'pnasnet5large.tf_in1k')
    utils.write_atomic(path, lambda f: weights_io.write_weights(payload, path, f))
    log(f'cached {path}')


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _check_release_names(tensors: dict, preset: str, archive: str) -> None:
    """The checkpoint's variables are the release's (data/*.vars.tsv), by name; the aux head's
    BatchNorms (which the published files lack) and training's bookkeeping may be there or not."""
    def kept(names):
        return {n for n in names if not (tf_weights.AUX_BN.match(n) or tf_weights.BOOKKEEPING.search(n))}
    with open(os.path.join(utils.DATA_DIR, RELEASE_VARIABLES[preset])) as f:
        release = kept(line.split('\t', 1)[0] for line in f if line.strip())
    names = kept(tensors)
    missing, extra = sorted(release - names), sorted(names - release)
    if missing or extra:
        first = f'lacks {missing[0]}' if missing else f'has {extra[0]}, which the release has not'
        raise ConvertError(f'{archive}: not the PNASNet-5 {preset.capitalize()} release ({first}; '
                           f'{len(missing) + len(extra)} names differ); point '
                           f'{URL_VARIABLES[preset]} at the release or a copy of it')


def weights_file(value, preset: Optional[str] = None, source: str = 'tf', log=_say):
    """What ``--weights`` or an entry point's ``weights`` names, as a file: None or a path as it
    is; a weights object or its name, the cached official weights (a bare ``IMAGENET1K_TF`` is
    ``preset``'s, Large's without one; ``PNASNet5_Mobile_Weights.IMAGENET1K_TF`` Mobile's), which
    must be for ``preset``'s network where it is given."""
    if value is None or (isinstance(value, str) and os.path.exists(value)):
        return value
    try:
        member = _member(value, preset)
    except ValueError:
        if isinstance(value, str):
            return value  # not a name: the path's own error follows where it is read
        raise
    return member.file(preset, source, log)
