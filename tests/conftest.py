import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "lib")
if LIB not in sys.path:
    sys.path.insert(0, LIB)

# Real data shared beside the checkout (never copied into the repo).
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
COCO_MINI = os.path.join(SHARED, "data", "coco_mini")
if not os.path.isdir(COCO_MINI):
    # the GPU machine gets no ../shared: the GPU check scripts carry a copy in .gpu_data/
    # (an ignored folder, see dev/gpu_check.sh)
    _CARRIED = os.path.join(ROOT, ".gpu_data", "coco_mini")
    if os.path.isdir(_CARRIED):
        COCO_MINI = _CARRIED
DEMO_IMAGES = os.path.join(SHARED, "demo_images")


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA (bash dev/gpu_check.sh tests on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def coco_mini():
    if not os.path.isdir(COCO_MINI):
        pytest.skip("../shared/data/coco_mini not present")
    return COCO_MINI


@pytest.fixture
def fresh_cfg():
    """The global cfg at its defaults (unfrozen) for the test; afterwards it is put back exactly
    as the test found it, frozen state included."""
    import copy
    from pydetectron.core.config import cfg, reset_cfg
    saved = copy.deepcopy(cfg)
    was_immutable = cfg.is_immutable()
    reset_cfg()
    yield cfg
    cfg.immutable(False)
    dict.clear(cfg)
    dict.update(cfg, saved)
    cfg.immutable(was_immutable)


def pytest_sessionfinish(session, exitstatus):
    """A child process a test left running (a DataLoader worker of an iterator that a kept
    traceback still holds, say) would make this process wait for it at exit, and CI would hang
    after the summary. End such children here and name them."""
    import multiprocessing
    left = multiprocessing.active_children()
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin('terminalreporter')
    for proc in left:
        if reporter is not None:
            reporter.write_line('conftest: ending %r, left running by the tests' % (proc,))
        try:
            proc.kill()
            proc.join(timeout=5)
        except (OSError, ValueError, AssertionError):
            pass
