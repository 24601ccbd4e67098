"""The map's doors (README "Layout"): imports inside the package go one way. Every import of a
``pydetectron`` module is read from the source, function-level ones included."""
import ast
import os

import pytest

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'lib',
                   'pydetectron')

# package folder -> folders of the package it must never import
FORBIDDEN = {
    'core': {'engine'},    # only engine/ and tools/ know processes, the command line, training
    'modeling': {'datasets', 'roi_data', 'engine'},
    'datasets': {'modeling', 'roi_data', 'engine'},
    'roi_data': {'modeling', 'engine'},
    'ops': {'core', 'datasets', 'engine', 'modeling', 'nn', 'roi_data', 'utils'},
    'nn': {'core', 'datasets', 'engine', 'modeling', 'roi_data'},
}


def imported_folders(path):
    """{(package folder, line)} of every ``pydetectron.<folder>`` a file imports."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + ['%s.%s' % (node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split('.')
            if parts[0] == 'pydetectron' and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


def test_the_reader_sees_every_form_of_import(tmp_path):
    path = tmp_path / 'm.py'
    path.write_text('import pydetectron.engine.cli\nfrom pydetectron import engine\n'
                    'def f():\n    from pydetectron.engine.inference import run_inference\n'
                    'from . import sibling\nimport torch\n')
    assert imported_folders(str(path)) == {('engine', 1), ('engine', 2), ('engine', 4)}


@pytest.mark.parametrize('folder', sorted(FORBIDDEN))
def test_imports_go_one_way(folder):
    bad = []
    for d, _, files in os.walk(os.path.join(LIB, folder)):
        for name in sorted(files):
            if name.endswith('.py'):
                path = os.path.join(d, name)
                bad += ['%s:%d imports pydetectron.%s' % (os.path.relpath(path, LIB), line, to)
                        for to, line in sorted(imported_folders(path))
                        if to in FORBIDDEN[folder]]
    assert not bad, '\n'.join(bad)


def test_only_the_moved_names_reach_engine_from_below():
    """Below engine/, the one reference to an engine module is core/test_engine.py's forwarding of
    the names issue 18 moved to engine/ (looked up on first use, for code written against earlier
    versions): no other file names ``pydetectron.engine``, even as a string."""
    found = []
    for folder in sorted(FORBIDDEN):
        if 'engine' not in FORBIDDEN[folder]:
            continue
        for d, _, files in os.walk(os.path.join(LIB, folder)):
            for name in sorted(files):
                path = os.path.join(d, name)
                if name.endswith('.py'):
                    with open(path) as f:
                        if 'pydetectron.engine' in f.read():
                            found.append(os.path.relpath(path, LIB))
    assert found == [os.path.join('core', 'test_engine.py')]


def test_the_moved_names_are_still_importable_from_core():
    from pydetectron.core import test_engine
    from pydetectron.engine import inference, speed_options
    assert test_engine.run_inference is inference.run_inference
    assert test_engine.initialize_model_from_cfg is inference.initialize_model_from_cfg
    assert test_engine.portable_dataset_name is inference.portable_dataset_name
    assert test_engine.apply_speed_options is speed_options.apply_speed_options
    with pytest.raises(AttributeError, match='no_such_name'):
        test_engine.no_such_name
