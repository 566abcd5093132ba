"""The network: parameter counts, genotypes, validation, drop path, padding modes, loading."""
import dataclasses
import os

import pytest
import torch

import genotypes
import hubconf
import model
from genotypes import GenotypeError
from model import NetworkImageNet, PNASNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def n_params(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.quick
def test_full_presets_have_the_checkpoint_parameter_counts():
    large, mobile = NetworkImageNet(PNASNetConfig.large()), NetworkImageNet(PNASNetConfig.mobile())
    assert n_params(large) == 86_061_989
    assert n_params(mobile) == 5_066_202
    assert large.num_features == 4320 and mobile.num_features == 1080
    assert PNASNetConfig.large().reduction_indices == [4, 8]
    assert PNASNetConfig.mobile().reduction_indices == [3, 6]
    assert NetworkImageNet(PNASNetConfig.large(auxiliary=True)).auxiliary_head.kernel_size == 6
    assert NetworkImageNet(PNASNetConfig.mobile(auxiliary=True)).auxiliary_head.kernel_size == 4


def test_aux_kernel_size_and_the_smallest_input_the_aux_head_fits():
    large = PNASNetConfig.large(num_conv_filters=8)
    assert model.aux_kernel_size(large, 331) == 6
    assert model.aux_kernel_size(PNASNetConfig.mobile(), 224) == 4
    smallest = min(n for n in range(model.MIN_IMAGE_SIZE, 400) if model.aux_kernel_size(large, n) >= 1)
    assert model.spatial_sizes(large, smallest)[1 + 2 + large.aux_cell_index] == 5  # one 5x5 window
    net = model.NetworkImageNet(PNASNetConfig.large(num_conv_filters=8, auxiliary=True, image_size=smallest))
    assert net.auxiliary_head.kernel_size == 1
    with pytest.raises(ValueError, match='too small for the auxiliary head'):
        model.NetworkImageNet(PNASNetConfig.large(num_conv_filters=8, auxiliary=True, image_size=smallest - 1))


def small(**kw):
    values = dict(num_conv_filters=8, num_cells=5, image_size=128, auxiliary=True)
    values.update(kw)
    return PNASNetConfig.large(**values)


@pytest.mark.parametrize('name', sorted(genotypes.GENOTYPES))
def test_every_genotype_builds_and_runs(name):
    net = NetworkImageNet(small(genotype=name, num_classes=10))
    x = torch.randn(2, 3, 128, 128)
    net.train()
    logits, aux = net(x)
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    assert torch.isfinite(logits).all() and torch.isfinite(aux).all()
    net.eval()
    with torch.no_grad():
        logits = net(x)
        feats = net.extract_features(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
    assert feats.shape == (2, net.num_features)
    concat = len(genotypes.GENOTYPES[name].normal_concat)
    assert net.num_features == concat * 8 * 4  # two reductions double the width twice


def test_a_genotype_given_as_a_dict_round_trips():
    g = genotypes.get(genotypes.to_dict(genotypes.DARTS_V2))
    assert g == genotypes.get('DARTS_V2')
    cfg = small(genotype=genotypes.to_dict(genotypes.NASNet))
    assert PNASNetConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize('change, message', [
    (dict(normal=[('sep_conv_9x9', 0), ('max_pool_3x3', 1)]), "unknown op 'sep_conv_9x9'"),
    (dict(normal=[('sep_conv_3x3', 2), ('max_pool_3x3', 1)]), 'normal[0]'),
    (dict(normal=[('sep_conv_3x3', 0), ('max_pool_3x3', -1)]), 'normal[1]'),
    (dict(normal=[('sep_conv_3x3', 0), ('max_pool_3x3', True)]), 'normal[1]'),
    (dict(normal=[('sep_conv_3x3', 0)]), 'even-length'),
    (dict(normal=[('sep_conv_3x3', 0), 'max_pool_3x3']), 'normal[1]'),
    (dict(normal_concat=[1, 2]), 'normal_concat: entry 1'),
    (dict(reduce_concat=[2, 2]), 'twice'),
    (dict(reduce_concat=[]), 'non-empty'),
    (dict(reduce_concat=[2, 9]), 'entry 9'),
])
@pytest.mark.quick
def test_validate_rejects_bad_genotypes(change, message):
    bad = genotypes.PNASNet._replace(**change)
    with pytest.raises(GenotypeError) as err:
        genotypes.validate(bad)
    assert message in str(err.value)
    with pytest.raises(GenotypeError):
        NetworkImageNet(small(genotype=genotypes.to_dict(bad)))


def test_validate_accepts_the_published_genotypes_and_rejects_unknown_names():
    for g in genotypes.GENOTYPES.values():
        assert genotypes.validate(g) is g
    with pytest.raises(GenotypeError, match='unknown genotype'):
        genotypes.get('PNASNet6')


def test_drop_path_is_identity_in_eval_and_scales_survivors_in_training():
    from operations import drop_path
    x = torch.ones(4000, 2, 3, 3)
    torch.manual_seed(1)
    y = drop_path(x, 0.25)
    kept = y.flatten(1).amax(1)
    assert torch.unique(kept).tolist() == [0.0, pytest.approx(1 / 0.75)]  # dropped, or x / keep
    assert abs((kept > 0).float().mean().item() - 0.75) < 0.03
    assert torch.equal(drop_path(x, 0.0), x)

    net = NetworkImageNet(small(auxiliary=False))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(1.0)
    x = torch.randn(3, 3, 128, 128)
    net.eval()
    with torch.no_grad():
        net.drop_path_prob = 0.0
        ref = net(x)
        net.drop_path_prob = 0.5
        assert torch.equal(net(x), ref)  # eval: no drop path whatever the probability
    # TF-Slim scales the rate by the cell's position: (cell_num + 1) / (num_cells + 2)
    assert [c.drop_scale for c in net.cells] == [(k + 1) / 7 for k in range(7)]
    # training: examples differ from the no-drop output only where drop path was applied
    net.train()
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout)):
            m.eval()
    with torch.no_grad():
        net.drop_path_prob = 0.0
        no_drop = net(x)
        net.drop_path_prob = 0.5
        torch.manual_seed(0)
        dropped = net(x)
    assert torch.allclose(no_drop, ref, atol=1e-5)
    assert not torch.allclose(dropped, ref, atol=1e-3)


def test_padding_modes_agree_at_323_and_differ_at_331():
    """The earlier port's symmetric padding is exact only where stride 2 never meets an even size."""
    cfg = PNASNetConfig.large(num_conv_filters=8, auxiliary=False)
    tf_net = NetworkImageNet(cfg).eval()
    sym_net = NetworkImageNet(dataclasses.replace(cfg, padding='symmetric')).eval()
    sym_net.load_state_dict(tf_net.state_dict())
    with torch.no_grad():
        for size, same in ((323, True), (331, False)):
            x = torch.randn(1, 3, size, size)
            a, b = tf_net.forward_features(x), sym_net.forward_features(x)
            d = ((a - b).abs().max() / a.abs().max()).item()
            assert (d < 1e-6) == same and (same or d > 1e-2), (size, d)
    with pytest.raises(ValueError, match='padding'):
        NetworkImageNet(dataclasses.replace(cfg, padding='reflect'))


def test_aux_head_at_another_size_says_what_to_do():
    net = NetworkImageNet(small()).train()
    with pytest.raises(ValueError, match='image_size'):
        net(torch.randn(2, 3, 224, 224))


def test_load_pretrained_reads_config_files_and_bare_state_dicts(tmp_path):
    net = NetworkImageNet(small(genotype='DARTS_V2', num_classes=7)).eval()
    path = tmp_path / 'small.pth'
    torch.save({'config': net.config.to_dict(), 'state_dict': net.state_dict()}, path)
    x = torch.randn(1, 3, 128, 128)
    loaded = model.load_pretrained(str(path))
    assert not loaded.training and loaded.auxiliary_head is None
    assert loaded.genotype == genotypes.DARTS_V2
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert model.load_pretrained(str(path), auxiliary=True).auxiliary_head is not None

    large = NetworkImageNet(PNASNetConfig.large()).eval()
    bare = tmp_path / 'bare.pth'
    torch.save(large.state_dict(), bare)
    loaded = model.load_pretrained(str(bare))
    assert loaded.config == PNASNetConfig.large()
    for (k, a), b in zip(large.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.quick
def test_load_pretrained_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(model.CheckpointError, match='convert.py'):
        model.load_pretrained(str(tmp_path / 'missing.pth'))
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(model.CheckpointError, match='junk.pth') as info:
        model.load_pretrained(str(junk))
    # one line, and not PyTorch's advice to load untrusted pickles with weights_only=False
    assert '\n' not in str(info.value) and 'weights_only` set to `False' not in str(info.value)
    assert 'damaged' in str(info.value)
    cut = tmp_path / 'cut.pth'
    torch.save({'w': torch.zeros(1000)}, cut)
    cut.write_bytes(cut.read_bytes()[:500])
    with pytest.raises(model.CheckpointError, match=r'cut\.pth: not a PyTorch weights file') as info:
        model.load_pretrained(str(cut))
    assert '\n' not in str(info.value)
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(model.CheckpointError, match='empty or cut short'):
        model.load_pretrained(str(empty))
    no_aux = tmp_path / 'no_aux.pth'
    net = NetworkImageNet(small(auxiliary=False))
    torch.save({'config': net.config.to_dict(), 'state_dict': net.state_dict()}, no_aux)
    with pytest.raises(model.CheckpointError, match='auxiliary'):
        model.load_pretrained(str(no_aux), auxiliary=True)
    wrong = tmp_path / 'wrong.pth'
    torch.save({'config': small(num_conv_filters=16).to_dict(), 'state_dict': net.state_dict()}, wrong)
    with pytest.raises(model.CheckpointError, match='do not fit'):
        model.load_pretrained(str(wrong))


def test_genotypes_name_exactly_the_ops_and_import_nothing_of_the_project():
    import ast

    import genotypes
    import operations
    assert sorted(genotypes.PRIMITIVES) == sorted(operations.OPS)
    tree = ast.parse(open(genotypes.__file__).read())
    imported = {alias.name.split('.')[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or '')])}
    project = {os.path.splitext(f)[0] for f in os.listdir(os.path.dirname(genotypes.__file__))
               if f.endswith('.py')}
    assert imported and not imported & project, imported


def test_features_in_training_mode_do_not_run_the_aux_head():
    """forward_features / extract_features in train mode skip the aux head (a batch of one would
    fail in its BatchNorm); forward still runs it."""
    net = model.NetworkImageNet(model.PNASNetConfig.mobile(num_conv_filters=8, auxiliary=True)).train()
    calls = []
    net.auxiliary_head.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(1, 3, 224, 224)
    assert net.extract_features(x).shape == (1, net.num_features)
    assert net.forward_features(x).shape[:2] == (1, net.num_features) and calls == []
    logits, logits_aux = net(torch.randn(2, 3, 224, 224))
    assert calls == [1] and logits_aux.shape == logits.shape


@pytest.mark.quick
def test_forward_stages_taps_strides_and_channels_match_timms_for_large():
    import timm
    with torch.device('meta'):
        large = NetworkImageNet(PNASNetConfig.large())
        mobile = NetworkImageNet(PNASNetConfig.mobile())
    ref = timm.create_model('pnasnet5large', pretrained=False, features_only=True)
    large, mobile = hubconf.FeatureInfo(large.feature_info), hubconf.FeatureInfo(mobile.feature_info)
    assert large.channels() == ref.feature_info.channels() == [96, 270, 1080, 2160, 4320]
    assert large.reduction() == ref.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert large.module_name() == ['conv0_bn', 'cells.0', 'cells.5', 'cells.9', 'cells.13']
    assert mobile.channels() == [32, 65, 270, 540, 1080]
    assert mobile.reduction() == [2, 4, 8, 16, 32]


@pytest.mark.parametrize('preset, size', [('large', 331), ('mobile', 224)])
def test_forward_stages_shapes_and_the_last_map_is_forward_features(preset, size):
    torch.manual_seed(0)
    config = getattr(PNASNetConfig, preset)(num_conv_filters=8)
    net = NetworkImageNet(config).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        maps = net.forward_stages(x)
        feats = net.forward_features(x)
        picked = net.forward_stages(x, out_indices=(1, -1))
    sizes = model.spatial_sizes(config, size)  # conv0, then every cell
    taps = [0] + [k + 1 for k, c in enumerate(net.cells)
                  if k + 1 == len(net.cells) or net.cells[k + 1].reduction]
    assert [tuple(m.shape) for m in maps] == [
        (2, d['num_chs'], sizes[t], sizes[t]) for d, t in zip(net.feature_info, taps)]
    assert torch.equal(maps[-1], feats) and (maps[1] >= 0).all()
    assert torch.equal(picked[0], maps[1]) and torch.equal(picked[1], maps[-1])
    only = hubconf.Features(net, out_indices=(2, 3))
    with torch.no_grad():
        got = only.eval()(x)
    assert len(got) == 2 and torch.equal(got[0], maps[2]) and torch.equal(got[1], maps[3])
    with pytest.raises(ValueError, match='out_indices: 5'):
        hubconf.Features(net, out_indices=(5,))
    with pytest.raises(ValueError, match='out_indices: -6'):
        net.forward_stages(x, out_indices=(-6,))


@pytest.mark.parametrize('preset', ['large', 'mobile'])
def test_timm_style_default_cfg_forward_features_and_reset_classifier(preset):
    """The checks timm's tests/test_models.py makes of its models (default cfgs, forward
    features, features_only), here of this model at a small width."""
    torch.manual_seed(0)
    net = NetworkImageNet(getattr(PNASNetConfig, preset)(num_conv_filters=8)).eval()
    cfg = net.pretrained_cfg
    assert cfg is not None and cfg == net.default_cfg
    for key in ('input_size', 'pool_size', 'crop_pct', 'interpolation', 'mean', 'std',
                'first_conv', 'classifier', 'num_classes'):
        assert key in cfg, key
    assert cfg['interpolation'] == 'bilinear' and cfg['crop_pct'] == 0.875 and cfg['mean'] == (0.5,) * 3
    assert cfg['num_classes'] == 1001 and cfg['label_offset'] == 1
    state = net.state_dict()
    assert cfg['first_conv'] + '.weight' in state and cfg['classifier'] + '.weight' in state
    x = torch.randn(1, *cfg['input_size'])
    with torch.no_grad():
        feats = net.forward_features(x)
        assert tuple(feats.shape[-2:]) == cfg['pool_size'] and feats.shape[1] == net.num_features
        pre = net.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, net.num_features)
        assert torch.equal(net.forward_head(feats), net(x))
        net.reset_classifier(0)
        out = net(x)
    assert out.shape == (1, net.num_features) and torch.equal(out, pre)
    assert net.feature_info[-1]['num_chs'] == net.num_features and net.feature_info[-1]['reduction'] == 32


def test_grad_checkpointing_gives_the_same_loss_and_gradients():
    config = PNASNetConfig.mobile(num_conv_filters=8, num_cells=3, auxiliary=True, drop_path_prob=0.3,
                                  image_size=96)
    torch.manual_seed(0)
    net = NetworkImageNet(config).train()
    x, y = torch.randn(2, 3, 96, 96), torch.tensor([1, 2])
    grads = []
    for enable in (False, True):
        net.set_grad_checkpointing(enable)
        net.zero_grad()
        torch.manual_seed(5)  # the same drop-path masks in both runs
        logits, aux = net(x)
        loss = torch.nn.functional.cross_entropy(logits, y) + 0.4 * torch.nn.functional.cross_entropy(aux, y)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in net.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][1], grads[1][1]))


def test_timm_head_interface_num_classes_and_unpooled_maps():
    """num_classes, head_hidden_size and global_pool as timm has them: reset_classifier(0, '')
    and a model built with num_classes=0, global_pool='' give the unpooled map."""
    torch.manual_seed(0)
    config = PNASNetConfig.mobile(num_conv_filters=8)
    net = NetworkImageNet(config).eval()
    assert net.num_classes == 1001 and net.head_hidden_size == net.num_features == 160
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        feats = net.forward_features(x)
        net.reset_classifier(10)
        assert net.num_classes == 10 and net(x).shape == (1, 10)
        net.reset_classifier(0, '')
        assert net.num_classes == 0 and torch.equal(net(x), feats)
        net.reset_classifier(0, 'avg')
        assert torch.equal(net(x), feats.mean((2, 3)))
    with pytest.raises(ValueError, match="needs num_classes=0"):
        net.reset_classifier(5, '')
    with pytest.raises(ValueError, match="global_pool must be"):
        net.reset_classifier(0, 'max')
    bare = NetworkImageNet(dataclasses.replace(config, num_classes=0), global_pool='').eval()
    bare.load_state_dict({k: v for k, v in net.state_dict().items()})
    with torch.no_grad():
        assert torch.equal(bare(x), feats)


@pytest.mark.parametrize('preset, sizes', [('mobile', (96, 97)), ('large', (64, 70))])
def test_fx_trace_script_and_export_give_the_models_outputs_at_every_size(preset, sizes):
    """torch.fx keeps the 'SAME' padding out of the trace (it reads the input size), so one
    trace is right at odd and even sizes; torch.jit.script and torch.export give the same
    logits; torchvision's create_feature_extractor takes named nodes."""
    from torchvision.models.feature_extraction import create_feature_extractor
    torch.manual_seed(0)
    net = NetworkImageNet(getattr(PNASNetConfig, preset)(num_conv_filters=8)).eval()
    traced = torch.fx.symbolic_trace(net)
    scripted = torch.jit.script(net)
    features = create_feature_extractor(net, return_nodes={'cells.4': 'cell4', 'classifier': 'logits'})
    for size in sizes:
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            ref = net(x)
            assert torch.equal(traced(x), ref), size
            assert (scripted(x) - ref).abs().max() < 1e-5, size
            got = features(x)
            assert torch.equal(got['logits'], ref)
            assert got['cell4'].shape[1] == net.cells[4].multiplier * net.cells[4].C
    x = torch.randn(1, 3, sizes[0], sizes[0])
    exported = torch.export.export(net, (x,))
    with torch.no_grad():
        assert (exported.module()(x) - net(x)).abs().max() < 1e-5


def test_fx_traces_the_training_graph_with_drop_path_and_the_aux_head():
    torch.manual_seed(0)
    net = NetworkImageNet(PNASNetConfig.mobile(num_conv_filters=8, auxiliary=True, image_size=128))
    net.train()
    net.drop_path_prob = 0.2
    traced = torch.fx.symbolic_trace(net)
    x = torch.randn(2, 3, 128, 128)
    torch.manual_seed(3)
    logits, aux = net(x)
    torch.manual_seed(3)
    t_logits, t_aux = traced(x)
    assert torch.equal(logits, t_logits) and torch.equal(aux, t_aux)


@pytest.mark.quick
def test_the_research_model_stays_plain():
    """model.py and operations.py: no autograd Function, tracing/export switch or speed-only
    argument; Cell.forward fits on a screen; model.py imports nothing of the scripts."""
    import ast
    import inspect
    for name in ('model.py', 'operations.py'):
        text = open(os.path.join(ROOT, name)).read()
        for word in ('autograd.Function', 'is_tracing', 'onnx.is_in_onnx_export', 'rectified'):
            assert word not in text, (name, word)
    lines = inspect.getsource(model.Cell.forward).splitlines()
    assert len(lines) <= 25, len(lines)
    tree = ast.parse(open(os.path.join(ROOT, 'model.py')).read())
    imported = {alias.name.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split('.')[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {'utils', 'tf_reference', 'convert', 'main', 'train', 'engine'}, imported
