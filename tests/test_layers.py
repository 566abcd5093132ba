"""The shape of the code, read from the sources (docs/layout.md): layers without circles,
scripts on top and importing no other script, model.py the network alone, short functions, and a
quick selection of tests that reaches every test file."""
import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every module of the project, by layer. A module imports modules of its own layer or below,
# never above; scripts (the top) import no other script. docs/layout.md says what goes where.
LAYERS = {
    0: ['genotypes', 'operations', 'utils', 'runtime', 'weights_io', 'cifar',
        'neural_predictor.common', 'neural_predictor.pnas_space'],
    1: ['model', 'engine', 'neural_predictor.dataset', 'neural_predictor.model',
        'neural_predictor.strategies', 'neural_predictor.samplers', 'neural_predictor.study'],
    2: ['tf_reference', 'tf_weights', 'timm_weights', 'pretrained', 'hubconf'],
}
SCRIPTS = ['convert', 'main', 'train', 'export', 'visualize', 'benchmark', 'summary',
           'neural_predictor.train', 'neural_predictor.search',
           'neural_predictor.tools.nasbench_tfrecord_converter',
           'neural_predictor.tools.nb201_experiments', 'neural_predictor.tools.nb201_table',
           'neural_predictor.tools.split_train_val', 'neural_predictor.tools.sampler_comparison',
           'neural_predictor.tools.table_landscape']
# the one script a script may import: benchmark.py times train.py's own training step
SCRIPT_IMPORTS_ALLOWED = {('benchmark', 'train')}
PACKAGES = ['neural_predictor', 'neural_predictor.tools']


def module_files():
    """module name -> path, for every .py of the project outside tests/."""
    out = {}
    for path in glob.glob(os.path.join(ROOT, '**', '*.py'), recursive=True):
        rel = os.path.relpath(path, ROOT)
        if rel.startswith(('tests', '.venv', 'build')) or os.sep + '.' in os.sep + rel:
            continue
        name = rel[:-3].replace(os.sep, '.')
        out[name[:-len('.__init__')] if name.endswith('.__init__') else name] = path
    return out


def _main_block(node) -> bool:
    test = getattr(node, 'test', None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name) and test.left.id == '__name__')


def project_imports(path: str, modules) -> set:
    """The project's modules that ``path`` imports, anywhere in it (inside functions too), except
    in its ``if __name__ == '__main__':`` block: what runs there runs only when the file is the
    program (``python model.py --summary`` handing over to summary.py), never on import."""
    tree = ast.parse(open(path).read(), path)
    skipped = {id(n) for block in ast.walk(tree) if _main_block(block) for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                found.add(node.module)
            found |= {f'{node.module}.{a.name}' for a in node.names
                      if f'{node.module}.{a.name}' in modules}
    return found - set(PACKAGES)


@pytest.fixture(scope='module')
def graph():
    modules = module_files()
    return {name: project_imports(path, modules) for name, path in modules.items()}


def test_every_module_has_a_place(graph):
    placed = [m for names in LAYERS.values() for m in names] + SCRIPTS + PACKAGES
    assert sorted(set(graph) - set(placed)) == [], 'add the new module to LAYERS or SCRIPTS (docs/layout.md)'
    assert sorted(set(placed) - set(graph)) == []


def circle(graph) -> list:
    """One import circle of ``graph`` as a path (its first module again at the end), or []."""
    state = {}

    def visit(name, path):
        if state.get(name) == 'open':
            return path[path.index(name):] + [name]
        if state.get(name) == 'done':
            return []
        state[name] = 'open'
        for dep in sorted(graph[name]):
            found = visit(dep, path + [name])
            if found:
                return found
        state[name] = 'done'
        return []
    for name in sorted(graph):
        found = visit(name, [])
        if found:
            return found
    return []


def misplaced_imports(graph) -> list:
    """Each import of a script by a script (but benchmark -> train), or of a library module by a
    module of a lower layer, as one line."""
    layer = {m: k for k, names in LAYERS.items() for m in names}
    out = []
    for name, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if name in SCRIPTS and dep in SCRIPTS and (name, dep) not in SCRIPT_IMPORTS_ALLOWED:
                out.append(f'script {name} imports script {dep}')
            elif name in layer and not (dep in layer and layer[dep] <= layer[name]):
                out.append(f'{name} (layer {layer[name]}) imports {dep} '
                           f'({"a script" if dep in SCRIPTS else f"layer {layer.get(dep)}"})')
    return out


@pytest.mark.quick
def test_no_import_circle_and_every_import_downwards(graph):
    assert circle(graph) == [], 'import circle: ' + ' -> '.join(circle(graph))
    assert misplaced_imports(graph) == [], 'move what they share into a library module (docs/layout.md)'


def test_the_circles_and_script_imports_of_old_are_caught(graph):
    """What the checks say of the shapes this project had before its layers."""
    old = dict(graph, utils=graph['utils'] | {'tf_reference'},
               tf_reference=graph['tf_reference'] | {'convert'}, train=graph['train'] | {'main'})
    assert {'convert', 'tf_reference'} <= set(circle(old))
    assert misplaced_imports(old) == ['tf_reference (layer 2) imports convert (a script)',
                                      'script train imports script main',
                                      'utils (layer 0) imports tf_reference (layer 2)']


@pytest.mark.quick
def test_model_py_is_the_network_and_no_function_is_long():
    assert len(open(os.path.join(ROOT, 'model.py')).read().splitlines()) <= 520
    long = []
    tests = {f'tests.{os.path.basename(p)[:-3]}': p for p in glob.glob(os.path.join(ROOT, 'tests', '*.py'))}
    for name, path in {**module_files(), **tests}.items():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f'{name}.{node.name}: {lines} lines')
    assert long == [], 'split these functions: ' + ', '.join(long)


@pytest.mark.quick
def test_the_quick_selection_reaches_every_test_file():
    """``pytest -m quick`` (docs/tests.md) runs at least one test of each test file, but the
    one whose single test is timm's own suite (minutes, and only where TIMM_TEST_MODELS is set)."""
    for path in sorted(glob.glob(os.path.join(ROOT, 'tests', 'test_*.py'))):
        if os.path.basename(path) == 'test_timm_models.py':
            continue
        tree = ast.parse(open(path).read(), path)
        marked = any(isinstance(d, ast.Attribute) and d.attr == 'quick'
                     or isinstance(d, ast.Call) and getattr(d.func, 'attr', None) == 'quick'
                     for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                     for d in node.decorator_list)
        assert marked, f'{os.path.basename(path)}: mark one of its fast tests @pytest.mark.quick'
