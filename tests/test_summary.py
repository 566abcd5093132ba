"""summary.py (and ``python model.py --summary``, which forwards to it): what a genotype makes."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import genotypes
import summary
from model import NetworkImageNet, PNASNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_summary_counts_equal_flop_counter_mode_and_the_models_parameters():
    from torch.utils.flop_counter import FlopCounterMode
    config = PNASNetConfig.mobile(genotype='DARTS_V2', num_conv_filters=8, num_cells=3)
    s = summary.summarize(config, 96, time_forward=True)
    net = NetworkImageNet(dataclasses.replace(config, image_size=96, auxiliary=True)).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:  # a real CPU forward, where the summary counted on meta
        net(torch.randn(1, 3, 96, 96))
    assert s['multiply_adds'] == counter.get_total_flops() // 2 > 0
    assert s['parameters_with_aux'] == sum(p.numel() for p in net.parameters())
    assert s['parameters'] == sum(p.numel() for p in NetworkImageNet(config).parameters())
    assert s['cell_outputs']['conv0'] == [1, 32, 47, 47] and len(s['cell_outputs']) == 1 + 2 + 3
    assert s['cell_outputs']['cell_2'][1:] == [net.num_features, 3, 3] and s['forward_seconds'] > 0


@pytest.mark.quick
def test_summary_of_pnasnet5_large_at_331():
    s = summary.summarize(PNASNetConfig.large(), time_forward=False)
    assert s['parameters'] == 86_061_989  # 86.1 M, as published
    assert abs(s['multiply_adds'] / 1e9 - 25.0) < 0.1, s['multiply_adds']  # timm: 25.04 GMACs


def test_summary_cli_compares_two_genotypes_and_reads_json_genotypes(tmp_path, capsys):
    path = tmp_path / 'mine.json'
    path.write_text(json.dumps(genotypes.to_dict(genotypes.DARTS_V1)))
    small = ['--preset', 'mobile', '--filters', '8', '--cells', '3', '--image-size', '64', '--no-time']
    assert summary.main(['--summary', '--compare', 'PNASNet', str(path), '--json'] + small) == 0
    a, b = json.loads(capsys.readouterr().out)
    assert a['genotype'] == 'PNASNet' and b['genotype'] == str(path)
    darts = summary.summarize(PNASNetConfig.mobile(genotype='DARTS_V1', num_conv_filters=8,
                                                 num_cells=3), 64, time_forward=False)
    assert b['multiply_adds'] == darts['multiply_adds'] != a['multiply_adds']
    assert summary.main(['--summary'] + small) == 0
    assert 'multiply-adds:' in capsys.readouterr().out
    assert summary.main(['--summary', '--genotype', 'NoSuchNet'] + small) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown genotype 'NoSuchNet'" in err[0]


def test_model_py_summary_still_runs_the_tool():
    """The command docs and users had before the tool moved to summary.py."""
    small = ['--preset', 'mobile', '--filters', '8', '--cells', '3', '--image-size', '64', '--no-time']
    run = subprocess.run([sys.executable, 'model.py', '--summary', '--json'] + small, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout)
    want = summary.summarize(PNASNetConfig.mobile(num_conv_filters=8, num_cells=3), 64, time_forward=False)
    assert got['multiply_adds'] == want['multiply_adds'] and got['parameters'] == want['parameters']
    bad = subprocess.run([sys.executable, 'model.py', '--summary', '--genotype', 'NoSuchNet'] + small,
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.startswith('model.py: error: ')
