"""What the predictor's scripts share: atomic writes, one-line errors, metrics."""
import json
import os
import sys
import tempfile

import numpy as np


def replace_atomic(path: str, write_to) -> None:
    """``write_to(tmp)`` writes a temporary file beside ``path`` by its name, which is then
    renamed over ``path``: a reader never sees half a file, and an existing file survives a
    failed write."""
    folder = os.path.dirname(os.path.abspath(path)) or '.'
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.')
    os.close(fd)
    try:
        write_to(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str, write) -> None:
    """``write(f)`` into an open binary file, atomically as ``replace_atomic``."""
    def write_to(tmp):
        with open(tmp, 'wb') as f:
            write(f)
    replace_atomic(path, write_to)


def write_json(obj, path: str) -> None:
    text = json.dumps(obj, indent=1)
    write_atomic(path, lambda f: f.write(text.encode()))


def fail(script: str, message: str) -> int:
    print(f'{script}: error: {message}', file=sys.stderr)
    return 1


def kendall_tau(a, b) -> float:
    """Kendall's tau-b of two score lists (scipy's)."""
    from scipy.stats import kendalltau
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2:
        return float('nan')
    return float(kendalltau(a, b)[0])


def mse_percent(pred_acc, true_acc) -> float:
    """Mean squared error of accuracies in percent (percent squared), as the paper reports it."""
    d = (np.asarray(pred_acc, np.float64) - np.asarray(true_acc, np.float64)) * 100.0
    return float(np.mean(d * d))


def figures(pred_acc, true_acc) -> dict:
    """MSE in percent squared and Kendall tau of predicted against true accuracies."""
    return {'mse': mse_percent(pred_acc, true_acc), 'kendall_tau': kendall_tau(pred_acc, true_acc)}
