"""dev/gpu_check.sh's command line: the modes are checked before any set-up (a wrong one costs no
device time on the GPU machine)."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, 'dev', 'gpu_check.sh')


def _run(*modes):
    return subprocess.run(['bash', SCRIPT] + list(modes), capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, OUT='/nonexistent/out'))


def test_no_mode_is_a_usage_error():
    proc = _run()
    assert proc.returncode == 2
    assert ('give at least one MODE among: build tests ops train perf ab testnet trainnet multi '
            'recompiles') in proc.stderr
    assert 'bash dev/gpu_check.sh MODE [MODE...]' in proc.stderr   # the usage text


def test_unknown_mode_is_named_before_any_work():
    proc = _run('tests', 'bench')
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("gpu_check.sh: unknown mode 'bench'; expected one of: build "
                                   "tests ops train perf ab testnet trainnet multi recompiles")
    assert proc.stdout == ''   # nothing ran: no set-up, no machine description


def test_every_mode_has_its_body():
    for mode in ('build', 'tests', 'ops', 'train', 'perf', 'ab', 'testnet', 'trainnet', 'multi',
                 'recompiles'):
        assert os.path.isfile(os.path.join(ROOT, 'dev', 'gpu', mode + '.sh')), mode


def test_help_lists_the_modes():
    proc = _run('--help')
    assert proc.returncode == 0
    for mode in ('build', 'tests', 'ops', 'train', 'perf', 'ab', 'testnet', 'trainnet', 'multi',
                 'recompiles'):
        assert '\n  %s ' % mode in proc.stdout


def test_pack_puts_the_logs_in_one_file(tmp_path):
    """PACK=FILE.tgz (a device call brings back at most 8 files): after the modes, FILE.tgz
    holds $OUT's logs, and the script does not wait on its background packer."""
    import sys
    import tarfile
    out, pack = tmp_path / 'out', tmp_path / 'back' / 'logs.tgz'
    pack.parent.mkdir()
    env = dict(os.environ, CPU='1', PYTHON=sys.executable, OUT=str(out), PACK=str(pack),
               WORK=str(tmp_path / 'work'))
    proc = subprocess.run(['bash', SCRIPT, 'build'], capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with tarfile.open(pack) as tar:
        names = set(tar.getnames())
    assert {'./machine.txt', './throw.log'} <= names
    assert os.listdir(pack.parent) == ['logs.tgz']
