"""What the predictor's scripts share: atomic writes, one-line errors, metrics."""
import os
import sys
import tempfile

import numpy as np


def write_atomic(path: str, write) -> None:
    """``write(f)`` into a temporary file beside ``path``, then renamed over it: a reader never
    sees half a file, and an existing file survives a failed write."""
    folder = os.path.dirname(os.path.abspath(path)) or '.'
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
