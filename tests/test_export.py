"""export.py: ONNX (checked with onnxruntime) and TorchScript, at sizes where TF pads unevenly."""
import os

import numpy as np
import pytest
import torch

import export
import model


def small_weights(tmp_path, preset):
    # three cells: reductions at cells 1 and 2, so that at 331 px (Large) a stride-2 cell meets
    # 42 px and at 224 px (Mobile) stem_1 meets 56 px: TF's padding is uneven there
    torch.manual_seed(0)
    net = model.NetworkImageNet(getattr(model.PNASNetConfig, preset)(num_conv_filters=8, num_cells=3))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / f'{preset}.pth'
    torch.save({'config': net.config.to_dict(), 'state_dict': net.state_dict()}, path)
    return str(path), net.eval()


def test_large_shaped_onnx_with_a_dynamic_batch_and_torchscript(tmp_path):
    import onnxruntime
    weights, net = small_weights(tmp_path, 'large')
    onnx_path, ts_path = tmp_path / 'out' / 'large.onnx', tmp_path / 'out' / 'large.pt'
    assert export.main(['--weights', weights, '--onnx', str(onnx_path), '--dynamic-batch',
                        '--torchscript', str(ts_path)]) == 0
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (3, 3, 331, 331)).astype(np.float32))
    with torch.no_grad():
        want = net(x).numpy()
        traced = torch.jit.load(str(ts_path))(x).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    got = session.run(None, {'input': x.numpy()})[0]
    assert got.shape == want.shape == (3, 1001)
    assert np.abs(got - want).max() < 1e-4 and np.abs(traced - want).max() < 1e-4
    assert sorted(os.listdir(tmp_path / 'out')) == ['large.onnx', 'large.pt']


def test_mobile_shaped_onnx_at_224(tmp_path):
    import onnxruntime
    weights, net = small_weights(tmp_path, 'mobile')
    out = tmp_path / 'mobile.onnx'
    assert export.main(['--weights', weights, '--onnx', str(out), '--batch', '2']) == 0
    x = export.test_inputs(224, [2])[0]
    session = onnxruntime.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    with torch.no_grad():
        assert np.abs(session.run(None, {'input': x.numpy()})[0] - net(x).numpy()).max() < 1e-4


@pytest.mark.quick
def test_nothing_is_written_unless_the_check_passes(tmp_path, monkeypatch, capsys):
    weights, _ = small_weights(tmp_path, 'mobile')
    out = tmp_path / 'o' / 'm.onnx'
    monkeypatch.setattr(export, 'LOGIT_TOL', -1.0)  # no difference can pass
    assert export.main(['--weights', weights, '--onnx', str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('export.py: error: the ONNX graph differs from PyTorch')
    assert os.listdir(tmp_path / 'o') == []
    out.write_bytes(b'mine')
    assert export.main(['--weights', weights, '--onnx', str(out)]) == 1
    assert '--force' in capsys.readouterr().err and out.read_bytes() == b'mine'
    assert export.main(['--weights', str(tmp_path / 'none.pth'), '--onnx', str(tmp_path / 'x.onnx')]) == 1
    assert 'no such weights file' in capsys.readouterr().err
