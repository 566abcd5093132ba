"""The README and docs/: every command line they show runs, or, where it needs what no test has
(the official weights, ImageNet, NAS-Bench-101, a GPU: marked ``# needs: ...``), names only
flags its script has; every script's --help names its page; every page is reachable."""
import functools
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
SCRIPTS = {'benchmark.py': 'docs/performance.md', 'convert.py': 'docs/conversion.md',
           'export.py': 'docs/interop.md', 'main.py': 'docs/evaluation.md',
           'model.py': 'docs/experiments.md', 'summary.py': 'docs/experiments.md',
           'tf_reference.py': 'docs/conversion.md',
           'train.py': 'docs/training.md', 'visualize.py': 'docs/experiments.md',
           'neural_predictor/train.py': 'docs/neural-predictor.md',
           'neural_predictor/search.py': 'docs/neural-predictor.md',
           'neural_predictor/tools/nasbench_tfrecord_converter.py': 'docs/neural-predictor.md',
           'neural_predictor/tools/nb201_experiments.py': 'docs/neural-predictor.md',
           'neural_predictor/tools/split_train_val.py': 'docs/neural-predictor.md',
           'neural_predictor/tools/nb201_table.py': 'docs/neural-predictor.md',
           'neural_predictor/tools/sampler_comparison.py': 'docs/neural-predictor.md',
           'neural_predictor/tools/table_landscape.py': 'docs/neural-predictor.md',
           'tests/mutations.py': 'docs/tests.md'}
# Runnable commands that a test of their own runs with stronger checks: here only their flags
# are checked, so that the suite does not do the same work twice. Each test must exist.
RUN_ELSEWHERE = {
    'python convert.py --self-test':
        'tests/test_convert.py::test_the_self_test_command_passes_on_four_shapes_without_tf_log_lines',
}
COMMAND = re.compile(r'^(?:[A-Z_]+=\S+ )*(?:python3?|torchrun) ')


def command_lines(text: str):
    """(command, needs) of each command line in the page's code blocks: indented blocks and
    fenced blocks that are not Python. ``needs`` is the text of a ``# needs: ...`` comment."""
    out, fence = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith('```'):
            fence = None if fence is not None else stripped[3:]
            continue
        in_code = (fence is not None and fence not in ('python', 'py')) or (fence is None and line.startswith('    '))
        if not in_code:
            continue
        code, _, comment = stripped.partition('#')
        needs = re.match(r'\s*needs:\s*(.*)', comment)
        for part in code.split('&&'):
            part = part.strip()
            if COMMAND.match(part):
                out.append((part, needs.group(1).strip() if needs else None))
    return out


def all_commands():
    seen = {}
    for page in PAGES:
        for command, needs in command_lines(open(os.path.join(ROOT, page)).read()):
            seen.setdefault((command, needs), page)
    return [(page, command, needs) for (command, needs), page in seen.items()]


def split_command(command: str):
    """(env, script or None, args): ``python script.py args``, ``torchrun [opts] script.py args``;
    ``python -m pytest ...`` gives script None."""
    words = shlex.split(command)
    env = {}
    while words and re.match(r'^[A-Z_]+=', words[0]):
        key, _, value = words.pop(0).partition('=')
        env[key] = value
    words.pop(0)  # python / torchrun
    while words and words[0].startswith('-') and not words[0] == '-m':
        words.pop(0)  # torchrun's own options
    if words and words[0] == '-m':
        return env, None, words[1:]
    return env, words[0], words[1:]


@functools.lru_cache(maxsize=None)
def help_text(script: str) -> str:
    run = subprocess.run([sys.executable, script, '--help'], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, (script, run.stderr[-2000:])
    return run.stdout


def unknown_flags(command: str):
    """The --flags of ``command`` that its script's --help does not list."""
    _, script, args = split_command(command)
    if script is None:
        return []
    if script == 'neural_predictor/search.py' and '--' in args:  # the rest goes to train.py
        cut = args.index('--')
        return unknown_flags(shlex.join(['python', script, *args[:cut]])) + \
            unknown_flags(shlex.join(['python', 'train.py', *args[cut + 1:]]))
    known = set(re.findall(r'(--[\w-]+)', help_text(script)))
    return [a.split('=')[0] for a in args if a.startswith('--') and a.split('=')[0] not in known]


CASES = all_commands()


def test_the_pages_hold_commands_of_both_kinds():
    runnable = [c for _, c, needs in CASES if needs is None]
    marked = [c for _, c, needs in CASES if needs is not None]
    assert len(runnable) >= 6 and len(marked) >= 20, (runnable, marked)
    assert any('convert.py --self-test' in c for c in runnable)
    assert any('neural_predictor/train.py --table' in c for c in runnable)


@pytest.mark.parametrize('page, command, needs', CASES, ids=[f'{p}: {c[:70]}' for p, c, _ in CASES])
def test_documented_command(page, command, needs, tmp_path):
    env, script, args = split_command(command)
    if script is None:  # python -m MODULE: for pytest, the test paths it names are there
        if args[0] == 'pytest':
            paths = [a for a in args if not a.startswith('-') and a.startswith('tests')]
            assert paths and all(os.path.exists(os.path.join(ROOT, p)) for p in paths), command
        return
    assert os.path.isfile(os.path.join(ROOT, script)), f'{page}: {script} does not exist'
    assert not unknown_flags(command), f'{page}: {command}: {unknown_flags(command)} not in its --help'
    if needs is not None or command in RUN_ELSEWHERE:
        return
    # runs offline, in a folder of its own that sees the repository's files
    for name in os.listdir(ROOT):
        if name not in ('.git', '.venv', '__pycache__'):
            os.symlink(os.path.join(ROOT, name), tmp_path / name)
    run = subprocess.run([sys.executable, script, *args], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, **env), timeout=900)
    assert run.returncode == 0, f'{page}: {command}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}'


@pytest.mark.quick
def test_the_commands_run_elsewhere_have_their_tests():
    for command, test in RUN_ELSEWHERE.items():
        path, name = test.split('::')
        assert f'def {name}(' in open(os.path.join(ROOT, path)).read(), (command, test)
        assert any(c == command for _, c, _ in CASES), command


@pytest.mark.quick
def test_a_renamed_flag_is_caught():
    """What happens when a script's flag is renamed and a page still shows the old one."""
    assert unknown_flags('python model.py --summary --preset mobile --no-time') == []
    assert unknown_flags('python model.py --summary --preset mobile --no-timing') == ['--no-timing']
    assert unknown_flags('torchrun --nproc_per_node=2 main.py --batch-size 64 --batchsize 3') == ['--batchsize']
    # search.py --space pnas hands what follows -- to train.py: those are train.py's flags
    assert unknown_flags('python neural_predictor/search.py --space pnas --data D -- --epochs 1 --cells 3') == []
    assert unknown_flags('python neural_predictor/search.py --space pnas --data D -- --epoch 1') == ['--epoch']


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_every_scripts_help_names_its_page(script):
    page = SCRIPTS[script]
    assert page in help_text(script) and os.path.isfile(os.path.join(ROOT, page))


@pytest.mark.quick
def test_every_page_is_reachable_from_the_readme():
    readme = open(os.path.join(ROOT, 'README.md')).read()
    for page in PAGES[1:]:
        assert page in readme or os.path.basename(page) in readme, page
    for page in ('conversion', 'evaluation', 'training', 'experiments', 'neural-predictor', 'interop', 'performance'):
        assert f'docs/{page}.md' in readme, page
    assert len(readme.splitlines()) <= 200
