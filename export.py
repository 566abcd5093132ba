"""Exports a converted PNASNet-5 to ONNX (and TorchScript), and proves each export first.

    python export.py --weights data/PNASNet-5_Large.pth --onnx pnasnet5large.onnx
    python export.py --weights data/PNASNet-5_Mobile.pth --onnx m.onnx --dynamic-batch --torchscript m.pt

The graph takes NCHW float32 input of one fixed size (default: the weights' own, 331 Large, 224
Mobile; preprocessed as ``utils.preprocess_for_eval`` does) and returns the 1001 logits. TF's
'SAME' padding depends on the input size only, so at a fixed size every pad is a constant of
the graph: nothing dynamic is left to break the export. Before anything is written, onnxruntime
(on the CPU) runs the exported graph and its logits must be within 1e-4 of PyTorch's (scaled by
the logits' size when they exceed 1), as must the TorchScript module's; each file is written to a
temporary name and renamed only then.
"""
import argparse
import os
import sys
import warnings

import numpy as np
import torch

import model as model_mod
import utils

LOGIT_TOL = 1e-4


class ExportError(RuntimeError):
    """A problem the user can fix; printed as one line, exit status 1."""


class Logits(torch.nn.Module):
    """The network's eval forward, logits only (the aux head never runs in eval)."""

    def __init__(self, net: model_mod.NetworkImageNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_inputs(size: int, batches) -> list:
    """Smooth random images in [-1, 1], as the preprocessing gives, one batch per size asked."""
    import tf_reference  # its check images need no TensorFlow
    return [tf_reference.check_images(size, n=n, seed=n)[1] for n in batches]


def _max_diff(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max()) if got.shape == want.shape else float('inf')


def _tolerance(want: np.ndarray) -> float:
    return LOGIT_TOL * max(1.0, float(np.abs(want).max()))


def export_onnx(net: model_mod.NetworkImageNet, path: str, size: int, batch: int = 1,
                dynamic_batch: bool = False, log=print) -> float:
    """Exports, checks with onnxruntime, then renames into ``path``; returns the max |difference|."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError('checking an ONNX export needs onnxruntime (pip install -r requirements.txt)') from None
    wrapper = Logits(net).eval()
    x = test_inputs(size, [batch])[0]
    with utils.atomic_path(path, suffix='.onnx') as tmp:
        dynamic = ({0: torch.export.Dim('batch', min=1)},) if dynamic_batch else None
        with torch.no_grad():
            program = torch.onnx.export(wrapper, (x,), None, input_names=['input'],
                                        output_names=['logits'], dynamic_shapes=dynamic, dynamo=True,
                                        verbose=False)
        program.save(tmp)
        session = onnxruntime.InferenceSession(tmp, providers=['CPUExecutionProvider'])
        worst = 0.0
        for inp in test_inputs(size, [batch, batch + 1] if dynamic_batch else [batch]):
            with torch.no_grad():
                want = wrapper(inp).numpy()
            got = session.run(None, {'input': inp.numpy()})[0]
            d = _max_diff(got, want)
            log(f'onnxruntime at {tuple(inp.shape)}: max|logits - PyTorch| = {d:.3g}')
            if not d <= _tolerance(want):
                raise ExportError(f'the ONNX graph differs from PyTorch by {d:.3g} at '
                                  f'{tuple(inp.shape)} (> {_tolerance(want):.3g}); nothing was written')
            worst = max(worst, d)
    return worst


def export_torchscript(net: model_mod.NetworkImageNet, path: str, size: int, batch: int = 1,
                       log=print) -> float:
    """Traces at the fixed size, checks on another batch, then writes ``path`` atomically."""
    wrapper = Logits(net).eval()
    x, other = test_inputs(size, [batch, batch + 1])
    with torch.no_grad(), warnings.catch_warnings():
        # the trace is of one input size, where every padding decision is a constant (the
        # TracerWarnings say so); PyTorch also marks TorchScript as deprecated
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', FutureWarning)
        traced = torch.jit.trace(wrapper, (x,), check_trace=False)
        want, got = wrapper(other).numpy(), traced(other).numpy()
    d = _max_diff(got, want)
    log(f'TorchScript at {tuple(other.shape)}: max|logits - PyTorch| = {d:.3g}')
    if not d <= _tolerance(want):
        raise ExportError(f'the TorchScript module differs from PyTorch by {d:.3g}; nothing was written')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        utils.write_atomic(path, lambda f: torch.jit.save(traced, f))
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/interop.md')
    ap.add_argument('--weights', default='data/PNASNet-5_Large.pth', help='a convert.py output')
    ap.add_argument('--onnx', metavar='OUT.onnx', help='write the ONNX graph here')
    ap.add_argument('--torchscript', metavar='OUT.pt', help='write a traced TorchScript module here')
    ap.add_argument('--image-size', type=utils.int_at_least(model_mod.MIN_IMAGE_SIZE),
                    help='the fixed input size (default: the weights\' own)')
    ap.add_argument('--batch', type=utils.int_at_least(1), default=1, help='the batch of the export')
    ap.add_argument('--dynamic-batch', action='store_true', help='ONNX: any batch size')
    ap.add_argument('--force', action='store_true', help='replace existing output files')
    args = ap.parse_args(argv)
    try:
        if not (args.onnx or args.torchscript):
            raise ExportError('nothing to do: pass --onnx OUT.onnx and/or --torchscript OUT.pt')
        for path in (args.onnx, args.torchscript):
            if path and os.path.exists(path) and not args.force:
                raise ExportError(f'{path} exists; pass --force to replace it (it is kept as it is)')
        try:
            net = model_mod.load_pretrained(args.weights)
        except model_mod.CheckpointError as e:
            raise ExportError(str(e)) from None
        size = args.image_size or net.config.image_size
        if args.onnx:
            export_onnx(net, args.onnx, size, args.batch, args.dynamic_batch)
            print(f'wrote {args.onnx} ({size}x{size} px, batch {"any" if args.dynamic_batch else args.batch})')
        if args.torchscript:
            export_torchscript(net, args.torchscript, size, args.batch)
            print(f'wrote {args.torchscript} ({size}x{size} px)')
        return 0
    except ExportError as e:
        print(f'export.py: error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
