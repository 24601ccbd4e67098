"""dev/profile_test_net.py and dev/profile_train_net.py: the per-unit figures from a trace, and a
real (CPU) pass of each with its stages labelled."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'dev'))

import profile_test_net  # noqa: E402
import profile_train_net  # noqa: E402


def test_summarize_takes_the_union_of_gpu_work_and_counts_host_waits():
    ev = [
        {'ph': 'X', 'cat': 'kernel', 'name': 'k', 'ts': 0, 'dur': 10},
        {'ph': 'X', 'cat': 'kernel', 'name': 'k', 'ts': 5, 'dur': 10},     # overlaps: 0..15
        {'ph': 'X', 'cat': 'kernel', 'name': 'k', 'ts': 20, 'dur': 5},
        {'ph': 'X', 'cat': 'gpu_memcpy', 'name': 'm', 'ts': 30, 'dur': 2},
        {'ph': 'X', 'cat': 'gpu_memset', 'name': 's', 'ts': 31, 'dur': 4},  # 30..35
        {'ph': 'X', 'cat': 'cuda_runtime', 'name': 'cudaStreamSynchronize', 'ts': 0, 'dur': 7},
        {'ph': 'X', 'cat': 'cuda_runtime', 'name': 'cudaMemcpyAsync', 'ts': 9, 'dur': 3},
        {'ph': 'X', 'cat': 'cuda_runtime', 'name': 'cudaLaunchKernel', 'ts': 1, 'dur': 1},
        {'ph': 'X', 'cat': 'cuda_runtime', 'name': 'cudaLaunchKernelExC', 'ts': 2, 'dur': 1},
        {'ph': 'X', 'cat': 'cpu_op', 'name': 'aten::add', 'ts': 0, 'dur': 50},
        {'ph': 'i', 'cat': 'kernel', 'name': 'instant', 'ts': 100},
    ]
    s = profile_test_net.summarize({'traceEvents': ev}, 2, 0.004, unit='step')
    assert s['steps'] == 2 and s['wall_ms_per_step'] == pytest.approx(2.0)
    assert s['gpu_busy_ms_per_step'] == pytest.approx((15 + 5 + 5) / 1000.0 / 2)
    assert s['kernels_per_step'] == 1.5 and s['launches_per_step'] == 1.0
    assert s['host_blocked_ms_per_step'] == pytest.approx(10 / 1000.0 / 2)
    assert s['sync_calls_per_step'] == {'cudaStreamSynchronize': 0.5, 'cudaMemcpyAsync': 0.5}


@pytest.mark.slow
def test_a_training_step_is_profiled_with_its_stages(coco_mini, tmp_path):
    from pydetectron.core.config import assert_and_infer_cfg
    from pydetectron.modeling import losses, targets
    before = (targets.generate_proposal_labels, losses.rpn_losses_flat)
    assert_and_infer_cfg()      # a frozen config left by another test: the script starts anew
    summary = profile_train_net.main([
        '--out', str(tmp_path / 'p'), '--data', coco_mini, '--device', 'cpu', '--scale', '160',
        '--max-size', '267', '--bs', '1', '--nw', '0', '--warmup', '1', '--steps', '2',
        '--no-trace'])
    assert summary['steps'] == 2
    stages = summary['stages']
    for name in ('step', 'data', 'forward', 'Conv_Body', 'RPN', 'Box_Head', 'Mask_Head',
                 'optimizer', 'pack_gt', 'pack_polygons', '_rpn_anchors',
                 'rpn_anchor_targets_flat', 'rpn_losses_flat', 'generate_proposal_labels',
                 'fast_rcnn_losses', 'mask_rcnn_losses'):
        assert stages[name]['calls_per_step'] == 1.0, name
        assert stages[name]['host_ms_per_step'] > 0, name
    assert stages['step']['host_ms_per_step'] > stages['forward']['host_ms_per_step']
    assert stages['forward']['host_ms_per_step'] > \
        stages['generate_proposal_labels']['host_ms_per_step']
    assert (targets.generate_proposal_labels, losses.rpn_losses_flat) == before
    assert os.path.exists(tmp_path / 'p' / 'summary.json')
    assert os.path.exists(tmp_path / 'p' / 'ops.txt')


@pytest.mark.slow
@pytest.mark.parametrize('targets', ['fixed', 'unpadded'])
def test_steps_timed_without_the_profiler_with_the_targets_chosen(coco_mini, tmp_path, targets,
                                                                  monkeypatch):
    from pydetectron.core.config import assert_and_infer_cfg
    from pydetectron.modeling import targets as T
    seen = []
    real = T.generate_proposal_labels
    monkeypatch.setattr(T, 'generate_proposal_labels',
                        lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    assert_and_infer_cfg()
    summary = profile_train_net.main([
        '--out', str(tmp_path / 'p'), '--data', coco_mini, '--device', 'cpu', '--scale', '160',
        '--max-size', '267', '--bs', '1', '--nw', '0', '--warmup', '1', '--steps', '2',
        '--no-profile', '--targets', targets])
    assert summary['steps'] == 2 and summary['wall_ms_per_step'] > 0
    assert 'stages' not in summary and summary['targets'] == targets
    assert os.listdir(tmp_path / 'p') == ['summary.json']
    assert len(seen) == 3      # a warm-up step and the timed ones, all with the choice
    assert all(('roi_valid' in b) == (targets == 'fixed') for b in seen)


def test_a_bad_speed_flag_is_one_line_and_exit_2(coco_mini, registry_env, capsys):
    from pydetectron.core.config import reset_cfg
    try:
        with pytest.raises(SystemExit) as e:
            profile_test_net.main(['--out', 'unused', '--device', 'cpu',
                                   '--shape_buckets', '50'])
    finally:
        reset_cfg()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('profile_test_net.py: error: --shape_buckets 50: expected 0 (off)')
    assert '\n' not in err


@pytest.mark.slow
def test_a_test_net_pass_is_profiled_with_its_stages(coco_mini, registry_env, tmp_path):
    from pydetectron.core import mask_results, test
    from pydetectron.core.config import reset_cfg
    before = (test.im_detect_bbox, mask_results.paste_masks, mask_results.mask_util)
    dataset = 'coco_json:%s:%s' % (
        os.path.join(coco_mini, 'annotations', 'instances_val2017.json'),
        os.path.join(coco_mini, 'images', 'val2017'))
    try:
        summary = profile_test_net.main([
            '--out', str(tmp_path / 'p'), '--warmup', '0', '--device', 'cpu', '--scale', '160',
            '--max-size', '267', '--max-images', '2', '--dataset', dataset])
    finally:
        reset_cfg()
    assert summary['images'] == 2 and summary['detections_per_image'] == 100.0
    for name in ('im_detect_bbox', 'Conv_Body', 'box_results_for_images', 'im_detect_mask',
                 '_segms_of_image'):
        assert summary['stages'][name]['calls_per_image'] == 1.0, name
    assert os.path.exists(tmp_path / 'p' / 'trace.json.gz')
    assert (test.im_detect_bbox, mask_results.paste_masks, mask_results.mask_util) == before


def test_a_bad_dataset_is_the_tool_s_one_line_and_leaves_the_trainer_as_it_was(tmp_path,
                                                                              capsys):
    from pydetectron.engine.trainer import Trainer
    before = (Trainer._run_step, Trainer._next_batch, Trainer._forward)
    with pytest.raises(SystemExit) as e:
        # a dataset folder without the annotations: the tool stops before any step
        profile_train_net.main(['--out', str(tmp_path / 'p'), '--data', str(tmp_path),
                                '--device', 'cpu', '--warmup', '1', '--steps', '2'])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('train_net_step.py: error: '), err
    assert (Trainer._run_step, Trainer._next_batch, Trainer._forward) == before
