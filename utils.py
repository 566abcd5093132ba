"""Preprocessing, labels, data and metrics for ImageNet evaluation.

``preprocess_for_eval`` reproduces TF-Slim's inception ``preprocess_for_eval`` in NumPy, bit for
bit: the same float32 operations in the same order, so the evaluation needs no TensorFlow. ``preprocess_for_eval_tf`` keeps the TensorFlow original for comparison.
"""
import argparse
import contextlib
import ctypes
import json
import os
import re
import sys
import tempfile
from typing import BinaryIO, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
CLASS_NAMES_FILE = os.path.join(DATA_DIR, 'imagenet_class_names.tsv')
IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


# --- files ----------------------------------------------------------------------------------------

# Every file the project writes goes through these: a temporary file beside the target, renamed
# over it when complete. A reader never sees half a file, a failed write leaves what was there,
# and the file gets the permissions the umask gives a new file (not mkstemp's 0600).

def temporary_beside(path: str, suffix: str = '.tmp') -> str:
    """The name of a new, empty temporary file in ``path``'s folder (made if need be)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix=suffix, dir=folder)
    os.close(fd)
    return tmp


def publish(tmp: str, path: str) -> None:
    """Gives ``tmp`` the umask's permissions and renames it over ``path``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = '.tmp'):
    """Yields a temporary file name beside ``path`` for writers that take a name (ONNX, HDF5);
    published as ``path`` when the body ends, removed if it raises."""
    tmp = temporary_beside(path, suffix)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Calls ``write(file)`` on an open binary file that becomes ``path`` once complete."""
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            write(f)


def save_json(obj, path: str) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


# --- preprocessing ---------------------------------------------------------------------------------

def central_crop_box(h: int, w: int, central_fraction: float) -> Tuple[int, int, int, int]:
    """(top, left, height, width) of tf.image.central_crop, computed in float64 as TF does."""
    top = int((h - h * central_fraction) / 2)
    left = int((w - w * central_fraction) / 2)
    return top, left, h - 2 * top, w - 2 * left


def _legacy_bilinear_taps(in_size: int, out_size: int):
    """Source rows/columns and weights of TF's legacy resize_bilinear (align_corners=False,
    half_pixel_centers=False), in float32 like its kernel: src = i * (in / out)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    lower_f = np.floor(src)
    lerp = (src - lower_f).astype(np.float32)
    lower = lower_f.astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, lerp


def resize_bilinear_legacy(image: np.ndarray, height: int, width: int,
                           scale: Optional[np.float32] = None) -> np.ndarray:
    """HxWxC -> height x width x C float32, equal to tf.compat.v1.image.resize_bilinear.

    TF computes, per output pixel, top = tl + (tr - tl) * xl, bottom = bl + (br - bl) * xl,
    out = top + (bottom - top) * yl. ``top`` and ``bottom`` depend only on the source row, so
    they are computed once per source row here; the operations, and so the bits, are the same.
    With ``scale``, ``image`` is uint8 and each gathered pixel is first converted as
    ``float32(pixel) * scale`` (what convert_image_dtype does to every pixel), which gathers
    bytes instead of floats.
    """
    y0, y1, yl = _legacy_bilinear_taps(image.shape[0], height)
    x0, x1, xl = _legacy_bilinear_taps(image.shape[1], width)
    left = image[:, x0].astype(np.float32)
    right = image[:, x1].astype(np.float32)
    if scale is not None:
        left *= scale
        right *= scale
    right -= left                  # in place: horiz = left + (right - left) * xl
    right *= xl[None, :, None]
    right += left
    top, bottom = right[y0], right[y1]
    bottom -= top                  # out = top + (bottom - top) * yl
    bottom *= yl[:, None, None]
    bottom += top
    return bottom


def preprocess_for_eval(image: np.ndarray, height: int, width: int,
                        central_fraction: float = 0.875) -> np.ndarray:
    """uint8 HxWx3 -> float32 height x width x 3 in [-1, 1], as TF-Slim's inception
    preprocess_for_eval: convert_image_dtype, central_crop, legacy bilinear resize, (x - 0.5) * 2."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f'expected a uint8 HxWxC image, got {image.dtype} {image.shape}')
    h, w = image.shape[:2]
    if central_fraction:
        top, left, ch, cw = central_crop_box(h, w, central_fraction)
        image = image[top:top + ch, left:left + cw]
    # convert_image_dtype multiplies by float32(1/255); dividing by 255 differs in the last bit
    scale = np.float32(1.0 / 255)
    if height and width:
        x = resize_bilinear_legacy(image, height, width, scale=scale)
    else:
        x = image.astype(np.float32) * scale
    x -= np.float32(0.5)
    x *= np.float32(2.0)
    return x


def preprocess_for_eval_tf(image: np.ndarray, height: int, width: int,
                           central_fraction: float = 0.875) -> np.ndarray:
    """The TensorFlow original (inception_preprocessing.preprocess_for_eval), eagerly."""
    tf = import_tf()
    x = tf.image.convert_image_dtype(tf.constant(np.asarray(image)), tf.float32)
    if central_fraction:
        x = tf.image.central_crop(x, central_fraction=central_fraction)
    if height and width:
        x = tf.compat.v1.image.resize_bilinear(x[None], [height, width], align_corners=False)[0]
    return ((x - 0.5) * 2.0).numpy()


# --- TensorFlow, quietly ---------------------------------------------------------------------------

# TensorFlow's start-up notices. The oneDNN one ("oneDNN custom operations are on", from port.cc,
# twice: once per shared library) is written by absl before absl::InitializeLog(), straight to
# file descriptor 2 and whatever TF_CPP_MIN_LOG_LEVEL says; TF prints it where it turns oneDNN on,
# by default on AVX-512 CPUs and with TF_ENABLE_ONEDNN_OPTS=1 anywhere.
TF_STARTUP_LINE = re.compile(
    r'All log messages before absl::InitializeLog\(\) is called'
    r'|^[IW]\d{4} [\d:. ]+\d+ (port|cpu_feature_guard|mlir_graph_optimization_pass)\.cc:\d+\]'
    r'|^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler')


@contextlib.contextmanager
def tf_startup_filtered():
    """Runs its body with file descriptor 2 sent to a temporary file, then writes what came there
    back to stderr, less TensorFlow's start-up notices (TF_STARTUP_LINE). Errors and warnings of
    any other kind, TensorFlow's included, still reach the user, after the body."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode('utf-8', errors='replace')
            kept = [line for line in text.splitlines(keepends=True) if not TF_STARTUP_LINE.search(line)]
            if kept:
                sys.stderr.write(''.join(kept))
                sys.stderr.flush()


def import_tf():
    """TensorFlow, imported only where it is needed, without its start-up notices on any CPU."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    with tf_startup_filtered():
        import tensorflow as tf
    tf.get_logger().setLevel('ERROR')
    return tf


# --- images and labels -----------------------------------------------------------------------------

class BadImageError(RuntimeError):
    pass


def load_rgb(path: str) -> np.ndarray:
    """Decodes any image PIL reads (grayscale, CMYK, PNG inside .JPEG, ...) as RGB uint8 HxWx3,
    as torchvision's ImageFolder loader does."""
    try:
        with open(path, 'rb') as f:
            img = Image.open(f)
            img = img.convert('RGB')
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f'{path}: cannot decode the image ({e})') from None


def read_class_names(path: str = CLASS_NAMES_FILE) -> List[Tuple[str, str]]:
    """The 1000 ILSVRC-2012 (wnid, name) pairs, sorted by wnid: class k is the k-th."""
    with open(path) as f:
        return [tuple(line.rstrip('\n').split('\t', 1)) for line in f if line.strip()]


def class_folders(root: str) -> List[str]:
    """The class folders of an ImageFolder-style tree, sorted (torchvision's order)."""
    return sorted(d.name for d in os.scandir(root) if d.is_dir())


def folder_images(folder: str) -> List[str]:
    """Every image under ``folder`` (sub-folders too, links followed), in a fixed sorted order."""
    paths = []
    for root, _, files in sorted(os.walk(folder, followlinks=True)):
        paths += [os.path.join(root, name) for name in sorted(files)
                  if name.lower().endswith(IMAGE_EXTENSIONS)]
    return paths


def find_images(valdir: str, class_names: Optional[Sequence[str]] = None
                ) -> Tuple[List[Tuple[str, int]], List[str], str]:
    """(path, class index) of every image of an ImageNet-style folder, in ImageFolder order.

    With ``class_names`` (a train.py output's classes), class k is the folder named
    ``class_names[k]``. Without, labels come from the canonical sorted list of the 1000 wnids, so
    a folder holding a subset of the classes keeps the right labels; folders not named by wnids
    are accepted only when there are exactly 1000 of them (their sorted order is then taken as
    the class order). Returns (samples, class folder names, how the labels were assigned).
    """
    if not os.path.isdir(valdir):
        raise FileNotFoundError(f'{valdir}: no such folder; put the validation images there in '
                                f'one folder per class (see README.md) or pass --valdir')
    classes = class_folders(valdir)
    if not classes:
        raise FileNotFoundError(f'{valdir}: holds no class folders (expected one folder per class, '
                                f'such as the wnid folders n01440764/ of ImageNet, with the images inside)')
    if class_names is not None:
        index = {c: i for i, c in enumerate(class_names)}
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise ValueError(f'{valdir}: folder {unknown[0]!r} is not one of the {len(index)} '
                             f'classes the weights were trained on ({", ".join(list(index)[:5])}'
                             f'{", ..." if len(index) > 5 else ""})')
        mapping, how = {c: index[c] for c in classes}, 'class names of the weights'
    else:
        wnids = [w for w, _ in read_class_names()]
        index = {w: i for i, w in enumerate(wnids)}
        unknown = [c for c in classes if c not in index]
        if not unknown:
            mapping, how = {c: index[c] for c in classes}, 'wnid'
        elif len(classes) == 1000:
            mapping, how = {c: i for i, c in enumerate(classes)}, 'sorted folder order'
        else:
            raise ValueError(f'{valdir}: folder {unknown[0]!r} is not an ILSVRC-2012 wnid and there '
                             f'are {len(classes)} class folders, not 1000, so labels cannot be '
                             f'assigned; name the folders by wnid (n01440764, ...)')
    samples = [(path, mapping[c]) for c in classes for path in folder_images(os.path.join(valdir, c))]
    if not samples:
        raise FileNotFoundError(f'{valdir}: the class folders hold no images')
    return samples, classes, how


class EvalDataset(torch.utils.data.Dataset):
    """Decoded, TF-preprocessed images as CHW float32 tensors, with labels and dataset indices.

    A bad image raises BadImageError naming it, or with ``skip_bad`` gives a sample with label
    -1 that the evaluation counts and reports.
    """

    def __init__(self, samples: Sequence[Tuple[str, int]], image_size: int, preprocess: str = 'numpy',
                 skip_bad: bool = False, central_fraction: float = 0.875):
        self.samples = list(samples)
        self.image_size = image_size
        self.skip_bad = skip_bad
        self.central_fraction = central_fraction
        if preprocess not in ('numpy', 'tf'):
            raise ValueError(f"preprocess must be 'numpy' or 'tf', got {preprocess!r}")
        self.preprocess = preprocess

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        fn = preprocess_for_eval if self.preprocess == 'numpy' else preprocess_for_eval_tf
        try:
            x = fn(load_rgb(path), self.image_size, self.image_size, self.central_fraction)
        except BadImageError:
            if not self.skip_bad:
                raise
            x, label = np.zeros((self.image_size, self.image_size, 3), np.float32), -1
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), label, i


def tune_cpu_allocator() -> None:
    """Keeps freed buffers of up to 32 MiB in the process heap (Linux, glibc), for CPU inference.

    glibc's defaults give buffers of a few MiB back to the OS when they are freed and page-fault
    them in again on the next batch, which costs PNASNet-5 Large on the CPU a good part of its
    forward pass (benchmark.py shows it). 32 MiB is glibc's largest mmap threshold;
    larger buffers are still mapped and unmapped, so every thread's allocations keep working.
    """
    if not sys.platform.startswith('linux'):
        return
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return
    libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 30)    # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap


# --- command lines ---------------------------------------------------------------------------------

def count_costs(net: torch.nn.Module, image_size: int) -> Tuple[int, int]:
    """(parameters, multiply-adds per image) of ``net``, which may live on the meta device:
    FlopCounterMode's count of one forward (convolutions and the classifier), half its FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode
    device = next(net.parameters()).device
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.empty(1, 3, image_size, image_size, device=device))
    return sum(p.numel() for p in net.parameters()), counter.get_total_flops() // 2


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number no smaller than ``low``, refused with the reason."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a whole number') from None
        if value < low:
            raise argparse.ArgumentTypeError(f'{value} is below {low}')
        return value
    return parse


# --- metrics ---------------------------------------------------------------------------------------

def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> List[int]:
    """Number of samples whose target is among the top-k logits, for each k."""
    return topk_hits(logits.topk(max(ks), dim=1).indices, target, ks)


def topk_hits(pred: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> List[int]:
    """``topk_correct`` from the predicted classes, best first ([N, max(ks)])."""
    hit = pred.eq(target.view(-1, 1))
    return [int(hit[:, :k].any(dim=1).sum()) for k in ks]
