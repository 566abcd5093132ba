"""NetworkCIFAR: every genotype at 32 px, PNASNet against the TF twin's CIFAR build, the preset's
size, and train.py's CIFAR-10 mode on files in the real CIFAR-10 format."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

import cifar
import genotypes
import model
import tf_reference
import tf_weights
from conftest import assert_every_payload_refused, aux_logits, within_tf_bound
from model import PNASNetConfig



@pytest.mark.parametrize('name', sorted(genotypes.GENOTYPES))
def test_every_genotype_runs_forward_and_backward_at_32_px(name):
    torch.manual_seed(0)
    config = PNASNetConfig.cifar(genotype=name, num_conv_filters=8, num_cells=5, auxiliary=True,
                                 drop_path_prob=0.2)
    net = model.NetworkCIFAR(config).train()
    assert [c.reduction for c in net.cells] == [False, True, False, True, False]
    x = torch.randn(4, 3, 32, 32)
    logits, aux = net(x)
    assert logits.shape == (4, 10) and aux.shape == (4, 10)
    (logits.logsumexp(1).sum() + 0.4 * aux.logsumexp(1).sum()).backward()
    assert all(p.grad is not None for p in net.parameters())
    shapes = [tuple(m.shape[1:]) for m in net.eval().forward_stages(torch.randn(1, 3, 32, 32))]
    assert [s[1] for s in shapes] == [32, 32, 16, 8]  # stem, then one tap per stride
    assert [d['reduction'] for d in net.feature_info] == [1, 1, 2, 4]


@pytest.mark.quick
def test_the_cifar_stem_is_tf_slims():
    net = model.NetworkCIFAR()
    assert net.config.stem == 'cifar' and net.conv0.stride == (1, 1) and net.conv0.padding == (1, 1)
    assert net.conv0.out_channels == 144  # int(F * stem_multiplier) = 48 * 3
    assert [c.reduction for c in net.cells] == [False] * 3 + [True] + [False] * 2 + [True] + [False] * 2
    assert net.config.aux_cell_index == 5  # the last cell before the second reduction
    # drop path scales with the position among the 9 cells (no stem cells to count)
    assert [c.drop_scale for c in net.cells] == pytest.approx([(k + 1) / 9 for k in range(9)])
    assert net.auxiliary_head is None and net.config.dropout == 0.0 and net.config.num_classes == 10


def test_pnasnet5_cifar_parameter_count_is_pinned():
    net = model.NetworkCIFAR(PNASNetConfig.cifar(auxiliary=True))
    total = sum(p.numel() for p in net.parameters())
    aux = sum(p.numel() for p in net.auxiliary_head.parameters())
    assert total - aux == 3_189_082  # the paper: 3.2 M
    assert aux == 1_643_786  # its last conv is 4x4: 128 x 768 x 16 of it
    assert model.build_network(PNASNetConfig.cifar()).__class__ is model.NetworkCIFAR


@pytest.mark.parametrize('filters, cells', [(8, 5), (12, 8)])
def test_pnasnet_cifar_matches_the_tf_twin(tmp_path, tf, filters, cells):
    config = PNASNetConfig.cifar(num_conv_filters=filters, num_cells=cells)
    batch = tf_reference.calibration_images(32, n=3, seed=7)
    prefix = str(tmp_path / 'cifar.ckpt')
    _, (ref,) = tf_reference.make_random_checkpoint(prefix, config, seed=filters, eval_images=[batch])
    tensors = tf_weights.read_checkpoint(prefix)
    assert 'l1_stem_3x3/weights' in tensors and not any(k.startswith('cell_stem') for k in tensors)
    net = model.NetworkCIFAR(PNASNetConfig.cifar(num_conv_filters=filters, num_cells=cells,
                                                 auxiliary=True))
    report = tf_weights.load_tf_weights(net, tensors)
    assert report['aux_head'] == 'complete' and report['bookkeeping'] == ['global_step']
    net.eval()
    x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        logits = net(x).numpy()
    aux = aux_logits(net, x).numpy()
    d_logits, d_aux = np.abs(logits - ref['logits']).max(), np.abs(aux - ref['aux_logits']).max()
    print(f'CIFAR F={filters} {cells} cells: logits {d_logits:.2e} aux {d_aux:.2e}')
    assert 0.2 < np.abs(ref['logits']).max() < 5
    assert within_tf_bound(logits, ref['logits']) and within_tf_bound(aux, ref['aux_logits'])


def write_cifar10(root, n_train=100, n_test=30, seed=0):
    """torchvision's CIFAR10 layout: cifar-10-batches-py/ with five pickled training batches, a
    test batch and batches.meta; the task: a class's images are brighter in one channel."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder, exist_ok=True)
    names = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']

    def batch(n, label):
        labels = rng.integers(0, 3, n)  # three of the ten classes: learnable in a few epochs
        img = rng.integers(0, 120, (n, 3, 32, 32))
        img[np.arange(n), labels] += 120
        return {b'batch_label': label.encode(), b'labels': labels.tolist(),
                b'data': img.reshape(n, -1).astype(np.uint8),
                b'filenames': [f'{i}.png'.encode() for i in range(n)]}
    for k in range(1, 6):
        with open(os.path.join(folder, f'data_batch_{k}'), 'wb') as f:
            pickle.dump(batch(n_train // 5, f'training batch {k} of 5'), f)
    with open(os.path.join(folder, 'test_batch'), 'wb') as f:
        pickle.dump(batch(n_test, 'testing batch 1 of 1'), f)
    with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
        pickle.dump({b'label_names': [n.encode() for n in names], b'num_cases_per_batch': 10000,
                     b'num_vis': 3072}, f)
    return str(root)


def test_cifar10_run_in_the_real_format_learns(tmp_path):
    import train
    data = write_cifar10(tmp_path / 'c10')
    out = tmp_path / 'run'
    status = train.main(['--dataset', 'cifar10', '--data', data, '--output', str(out), '--filters', '8',
                         '--cells', '5', '--epochs', '4', '--batch-size', '10', '--workers', '0',
                         '--no-progress', '--lr', '0.05'])
    assert status == 0
    log = [json.loads(line) for line in open(out / 'log.jsonl')]
    assert len(log) == 4 and log[0]['train_images'] == 100
    assert log[0]['train_loss_aux'] is not None  # the aux head fits 32 px and is trained
    assert max(r['val_prec1'] for r in log) >= 0.7  # three classes: chance is 1/3
    state = torch.load(out / 'last.pth', weights_only=True)
    args = state['args']
    assert args['dataset'] == 'cifar10' and args['optimizer'] == 'sgd' and args['schedule'] == 'cosine'
    assert args['weight_decay'] == 3e-4 and args['drop_path'] == 0.4 and args['label_smoothing'] == 0.0
    assert state['config']['stem'] == 'cifar' and state['class_names'][0] == 'airplane'
    net = model.load_pretrained(str(out / 'best.pth'))
    assert isinstance(net, model.NetworkCIFAR) and net.class_names[9] == 'truck'


@pytest.mark.quick
def test_cifar10_bad_copies_get_one_line(tmp_path, capsys):
    import train
    status = train.main(['--dataset', 'cifar10', '--data', str(tmp_path / 'none'), '--output',
                         str(tmp_path / 'o'), '--no-progress'])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and '--download' in err[0] and 'data_batch_1' in err[0]
    data = write_cifar10(tmp_path / 'c10', n_train=10, n_test=5)

    class Evil:  # a pickle that would run a command when plainly unpickled
        def __reduce__(self):
            return (os.system, ('echo pwned',))
    with open(os.path.join(data, 'cifar-10-batches-py', 'data_batch_3'), 'wb') as f:
        pickle.dump({'data': Evil(), 'labels': [0]}, f)
    status = train.main(['--dataset', 'cifar10', '--data', data, '--output', str(tmp_path / 'o'),
                         '--no-progress', '--workers', '0'])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and 'data_batch_3' in err[0] and 'not allowed' in err[0]


def test_the_cifar_unpickler_refuses_every_kind_of_payload(tmp_path, evil_pickles):
    """eval, exec, getattr, __import__, os.system, subprocess and a nested reduce: each refused
    with one line naming the file and the global, and none of them ran."""
    payloads, marker = evil_pickles
    assert_every_payload_refused(cifar.read_batch, cifar.CifarError, payloads, marker, tmp_path, '.batch')
    for name, data in payloads.items():  # the unpickler itself, not only read_batch's wrapper
        with pytest.raises(pickle.UnpicklingError, match='not allowed'):
            cifar.restricted_load(data)
