"""The NumPy preprocessing against TensorFlow's, the metrics, the command-line types."""
import argparse
import os

import numpy as np
import pytest
import torch

import utils


def test_preprocess_for_eval_equals_tf_on_many_shapes(tf):
    rng = np.random.default_rng(2024)
    shapes = [((375, 500), (331, 331)), ((500, 375), (224, 224)), ((331, 331), (331, 331)),
              ((64, 48), (331, 331)), ((31, 17), (9, 13)), ((600, 401), (299, 300)),
              ((2, 3), (5, 5)), ((1000, 999), (323, 323))]
    shapes += [(tuple(rng.integers(8, 700, 2)), tuple(rng.integers(4, 400, 2))) for _ in range(30)]
    worst, inexact, total = 0.0, 0, 0
    for (h, w), (oh, ow) in shapes:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for fraction in (0.875, 1.0):
            mine = utils.preprocess_for_eval(img, oh, ow, central_fraction=fraction)
            ref = utils.preprocess_for_eval_tf(img, oh, ow, central_fraction=fraction)
            assert mine.dtype == np.float32 and mine.shape == ref.shape == (oh, ow, 3)
            worst = max(worst, float(np.abs(mine - ref).max()))
            inexact += int((mine != ref).sum())
            total += mine.size
    print(f'preprocess_for_eval vs TF: max|d| = {worst:.3g}, inexact values: {inexact} of {total}')
    assert inexact == 0 and worst == 0.0  # bit for bit: not one value may differ


def test_central_crop_box_matches_tf_integer_arithmetic():
    assert utils.central_crop_box(375, 500, 0.875) == (23, 31, 329, 438)
    assert utils.central_crop_box(331, 331, 0.875) == (20, 20, 291, 291)


def test_preprocess_rejects_what_is_not_a_uint8_image():
    import pytest
    with pytest.raises(ValueError, match='uint8'):
        utils.preprocess_for_eval(np.zeros((4, 4, 3), np.float32), 2, 2)


def test_topk_correct_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0],
                           [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    assert utils.topk_correct(logits, torch.tensor([1, 1, 0])) == [1, 2]
    assert utils.topk_correct(logits, torch.tensor([1, 0, 6])) == [3, 3]


def test_int_at_least_refuses_with_the_reason():
    parse = utils.int_at_least(3)
    assert parse('3') == 3 and parse('331') == 331
    with pytest.raises(argparse.ArgumentTypeError, match='2 is below 3'):
        parse('2')
    with pytest.raises(argparse.ArgumentTypeError, match="'3.5' is not a whole number"):
        parse('3.5')


def test_topk_hits_counts_from_predicted_classes():
    pred = torch.tensor([[3, 1, 2], [0, 2, 1], [2, 0, 1]])
    assert utils.topk_hits(pred, torch.tensor([3, 2, 1]), ks=(1, 2, 3)) == [1, 2, 3]


@pytest.mark.quick
@pytest.mark.parametrize('umask', [0o022, 0o027, 0o002])
def test_every_writer_leaves_files_as_the_umask_allows(tmp_path, umask):
    """The one atomic writer (utils.write_atomic, utils.atomic_path for writers that take a
    name, and what the predictor's scripts and export.py write through them): the permissions of
    a new file under the umask, not mkstemp's 0600, and no temporary left beside it."""
    import json
    from neural_predictor.common import write_json
    saved = os.umask(umask)
    try:
        utils.write_atomic(str(tmp_path / 'a.bin'), lambda f: f.write(b'x'))
        utils.save_json({'a': 1}, str(tmp_path / 'b.json'))
        write_json({'b': 2}, str(tmp_path / 'c.json'))
        with utils.atomic_path(str(tmp_path / 'd.onnx'), suffix='.onnx') as tmp:
            with open(tmp, 'wb') as f:
                f.write(b'y')
        with open(tmp_path / 'plain', 'wb'):  # what open() gives under this umask
            pass
    finally:
        os.umask(saved)
    want = os.stat(tmp_path / 'plain').st_mode & 0o777
    assert want == 0o666 & ~umask
    for name in ('a.bin', 'b.json', 'c.json', 'd.onnx'):
        assert os.stat(tmp_path / name).st_mode & 0o777 == want, name
    assert json.loads((tmp_path / 'c.json').read_text()) == {'b': 2}
    assert sorted(os.listdir(tmp_path)) == ['a.bin', 'b.json', 'c.json', 'd.onnx', 'plain']


@pytest.mark.quick
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / 'kept.txt'
    path.write_text('old')

    def broken(f):
        f.write(b'half')
        raise OSError('disk full')
    with pytest.raises(OSError, match='disk full'):
        utils.write_atomic(str(path), broken)
    with pytest.raises(ValueError):
        with utils.atomic_path(str(path)) as tmp:
            open(tmp, 'wb').close()
            raise ValueError('the check failed')
    assert path.read_text() == 'old' and os.listdir(tmp_path) == ['kept.txt']
