"""What the predictor's scripts share: one-line errors, metrics, and JSON and binary files
written through the project's one atomic writer (``utils.write_atomic``)."""
import json
import sys

import numpy as np

from utils import write_atomic  # the predictor's scripts take it from here


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
