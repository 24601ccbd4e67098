"""requirements.txt is the one list of dependencies, and it is complete.

Every third-party module imported anywhere in the package, the tools, the developers' harness or
the tests (at any level: lazy imports inside functions count) must be provided by a distribution
that requirements.txt names; setup.py and make.sh read that file; the README's Requirements
section names every entry. And every module of the package imports.
"""
import ast
import functools
import importlib
import os
import pkgutil
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(REPO, 'lib')
SOURCE_DIRS = ('lib/pydetectron', 'tools', 'dev', 'tests')

# Import names that differ from the distribution's name (when the distribution is not installed
# here, importlib.metadata cannot tell).
IMPORT_TO_DISTRIBUTION = {
    'cv2': 'opencv-python-headless',
    'yaml': 'pyyaml',
    'pkg_resources': 'setuptools',
}


def _normalise(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def read_requirements(path=os.path.join(REPO, 'requirements.txt')):
    """{section: [normalised distribution name]} from requirements.txt's '# [section]' blocks."""
    sections, current = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith('# ['):
                current = line[3:line.index(']')]
                sections[current] = []
            elif line and not line.startswith('#'):
                assert current, 'requirement %r before any "# [section]" line' % line
                name = re.split(r'[<>=!~;\[ ]', line, maxsplit=1)[0]
                sections[current].append(_normalise(name))
    return sections


def local_module_names():
    """Modules that are files or packages of this repository (tests' helpers, tools imported by
    their tests, setup.py): not third-party."""
    names = {'pydetectron', 'setup'}
    for top in SOURCE_DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, top)):
            names.update(os.path.splitext(f)[0] for f in filenames if f.endswith('.py'))
            names.update(dirnames)
    return names


def imported_top_level_modules(path):
    """{top-level module name: first line number} of every absolute import in a Python file."""
    with open(path, 'rb') as f:
        tree = ast.parse(f.read(), filename=path)
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            found.setdefault(name.split('.')[0], node.lineno)
    return found


def third_party_imports(dirs=SOURCE_DIRS, repo=REPO):
    """[(module, 'file:line')] of the imports that are neither the standard library nor local."""
    local = local_module_names()
    stdlib = set(sys.stdlib_module_names)
    out = []
    for top in dirs:
        for dirpath, _, filenames in os.walk(os.path.join(repo, top)):
            for fname in sorted(filenames):
                if not fname.endswith('.py'):
                    continue
                path = os.path.join(dirpath, fname)
                for module, line in imported_top_level_modules(path).items():
                    if module in stdlib or module in local or module.startswith('_'):
                        continue
                    out.append((module, '%s:%d' % (os.path.relpath(path, repo), line)))
    return out


@functools.lru_cache(maxsize=None)
def _installed_distributions():
    try:
        from importlib.metadata import packages_distributions
    except ImportError:  # pragma: no cover - Python < 3.10
        return {}
    return packages_distributions()


def distribution_of(module):
    """The normalised distribution name that provides an import name."""
    if module in IMPORT_TO_DISTRIBUTION:
        return _normalise(IMPORT_TO_DISTRIBUTION[module])
    dists = _installed_distributions().get(module)
    return _normalise(dists[0]) if dists else _normalise(module)


def undeclared_imports(declared, dirs=SOURCE_DIRS, repo=REPO):
    """['module (file:line)'] of the third-party imports no declared distribution provides."""
    return sorted('%s (%s)' % (module, where) for module, where in third_party_imports(dirs, repo)
                  if distribution_of(module) not in declared)


def test_every_third_party_import_is_declared():
    sections = read_requirements()
    declared = {name for names in sections.values() for name in names}
    missing = undeclared_imports(declared)
    assert not missing, ('imported but not in requirements.txt: ' + ', '.join(missing))


def test_the_check_finds_an_undeclared_import(tmp_path):
    """The scan sees imports at any level (inside a function too) and names module and file."""
    pkg = tmp_path / 'lib' / 'pydetectron'
    pkg.mkdir(parents=True)
    (pkg / 'fine.py').write_text('import os\nimport numpy as np\nfrom pydetectron import x\n')
    (pkg / 'lazy.py').write_text('def f():\n    import yaml\n    from sklearn.metrics import auc\n')
    missing = undeclared_imports({'numpy', 'pyyaml'}, dirs=('lib/pydetectron',), repo=str(tmp_path))
    assert missing == ['sklearn (lib/pydetectron/lazy.py:3)']


def test_sections_and_what_reads_them():
    sections = read_requirements()
    assert set(sections) == {'runtime', 'build', 'test', 'dev'}
    for name in ('torch', 'numpy', 'scipy', 'pyyaml', 'opencv-python-headless', 'pycocotools'):
        assert name in sections['runtime']
    assert 'pytest' in sections['test']
    # nothing the package needs is only optional
    assert not set(sections['dev']) & set(sections['runtime'])
    # setup.py's install_requires / extras come from the file, not from a second list
    out = subprocess.run([sys.executable, '-c', (
        'import sys, runpy, setuptools; seen = {}\n'
        'setuptools.setup = lambda **kw: seen.update(kw)\n'
        'sys.argv = ["setup.py", "--name"]\n'
        'runpy.run_path("setup.py", run_name="__main__")\n'
        'print(seen["install_requires"]); print(sorted(seen["extras_require"].items()))')],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    install_requires, extras = out.stdout.strip().splitlines()[-2:]
    for name in sections['runtime']:
        assert name in _normalise(install_requires)
    for name in sections['test'] + sections['dev']:
        assert name in _normalise(extras)
    with open(os.path.join(REPO, 'setup.py')) as f:
        setup_text = f.read()
    assert 'requirements.txt' in setup_text
    with open(os.path.join(REPO, 'make.sh')) as f:
        assert 'requirements.txt' in f.read()


def test_readme_requirements_section_is_the_list():
    with open(os.path.join(REPO, 'README.md')) as f:
        readme = f.read()
    section = readme.split('## Requirements', 1)[1].split('\n## ', 1)[0]
    with open(os.path.join(REPO, 'requirements.txt')) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith('#')]
    for line in lines:
        assert line in section, 'README Requirements does not list %r' % line


def _package_modules():
    import pydetectron
    return sorted(m.name for m in pkgutil.walk_packages(pydetectron.__path__, 'pydetectron.'))


@pytest.mark.parametrize('module', _package_modules())
def test_every_package_module_imports(module):
    importlib.import_module(module)
