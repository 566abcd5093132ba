"""visualize.py: every genotype draws, from its name or from a JSON file."""
import json

import pytest

import genotypes
import visualize


@pytest.mark.parametrize('name', list(genotypes.GENOTYPES))
def test_every_genotype_draws_a_png_and_an_svg(name, tmp_path):
    prefix = str(tmp_path / name)
    assert visualize.main([name, '--output', prefix]) == 0
    png, svg = open(prefix + '.png', 'rb').read(), open(prefix + '.svg').read()
    assert png.startswith(b'\x89PNG\r\n\x1a\n') and len(png) > 20000
    assert '<svg' in svg and svg.count('concat') == 2  # the two cells' outputs


@pytest.mark.quick
def test_graph_has_an_op_node_per_op_and_an_edge_per_input():
    g = genotypes.PNASNet
    nodes, edges = visualize.cell_graph(g.normal, g.normal_concat)
    ops = [n for n in nodes if n[2] == 'op']
    assert [label for _, label, _, _ in ops] == [name for name, _ in g.normal]
    assert ('s4', 'op6') in edges and ('op6', 's5') in edges  # sep_conv_3x3 reads combination 4
    assert sum(1 for _, b in edges if b == 'out') == len(g.normal_concat)


@pytest.mark.quick
def test_a_genotype_from_json_and_a_bad_one(tmp_path, capsys, monkeypatch):
    path = tmp_path / 'mine.json'
    path.write_text(json.dumps(genotypes.to_dict(genotypes.DARTS_V2)))
    monkeypatch.chdir(tmp_path)
    assert visualize.main([str(path)]) == 0 and (tmp_path / 'mine.png').stat().st_size > 0
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'normal': [['conv_9x9', 0], ['none', 1]], 'normal_concat': [2],
                               'reduce': [['none', 0], ['none', 1]], 'reduce_concat': [2]}))
    assert visualize.main([str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown op 'conv_9x9'" in err[0]
    assert not (tmp_path / 'bad.png').exists()
