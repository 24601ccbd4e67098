"""engine.config_sequence.configure: the config sequence the tools share, step by step, and
its one-line user errors."""
import logging

import pytest

from pydetectron.engine.config_sequence import configure
from pydetectron.utils.errors import CliError, UserInputError

CFG = 'configs/baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml'


def test_train_sequence_order_and_dataset(fresh_cfg, caplog):
    fresh_cfg.TRAIN.DATASETS = ()
    seen = {}

    def after_merge(cfg):
        # the YAML, then the tool's overrides, then --set (the user's last word) are merged
        # before the tool's step, and the dataset is not resolved yet
        seen['lr'], seen['max_size'] = cfg.SOLVER.BASE_LR, cfg.TRAIN.MAX_SIZE
        seen['datasets'] = tuple(cfg.TRAIN.DATASETS)    # unresolved: the YAML's names
        cfg.RNG_SEED = 7

    with caplog.at_level(logging.WARNING):
        names = configure(CFG, ['TRAIN.MAX_SIZE', 900, 'MODEL.NUM_CLASSES', 5],
                          overrides=['SOLVER.BASE_LR', 0.5, 'TRAIN.MAX_SIZE', 700],
                          after_merge=after_merge, dataset='coco2017', split='train',
                          extra=['VIS', True], cuda=False)
    assert seen == {'lr': 0.5, 'max_size': 900, 'datasets': ('coco_2017_train',)}  # the YAML's
    assert names == ('coco_2017_train',)
    c = fresh_cfg
    assert c.TRAIN.DATASETS == ('coco_2017_train',) and c.MODEL.NUM_CLASSES == 81
    assert 'MODEL.NUM_CLASSES 5 from the config replaced by 81' in caplog.text
    assert c.RNG_SEED == 7 and c.VIS is True and c.CUDA is False
    assert c.is_immutable()                             # assert_and_infer_cfg ran


def test_train_dataset_from_the_config(fresh_cfg):
    assert configure(CFG, ['TRAIN.DATASETS', ('keypoints_coco_2017_train',)],
                     split='train') == ('keypoints_coco_2017_train',)
    assert fresh_cfg.MODEL.NUM_CLASSES == 2


def test_test_split(fresh_cfg):
    assert configure(CFG, dataset='coco2017', split='test') == ('coco_2017_val',)
    assert fresh_cfg.TEST.DATASETS == ('coco_2017_val',) and fresh_cfg.MODEL.NUM_CLASSES == 81


def test_test_split_keeps_the_configs_datasets(fresh_cfg):
    assert configure(CFG, ['TEST.DATASETS', ('coco_2017_val',)], split='test') is None
    assert fresh_cfg.TEST.DATASETS == ('coco_2017_val',)


def test_saved_config_when_no_cfg_file(fresh_cfg):
    calls = []

    def saved():
        calls.append(1)
        from pydetectron.core.config import merge_cfg_from_file
        merge_cfg_from_file(CFG)
        return True

    configure(None, ['TEST.DATASETS', ('coco_2017_val',)], saved=saved, split='test')
    assert calls == [1] and fresh_cfg.FPN.FPN_ON
    calls.clear()
    from pydetectron.core.config import reset_cfg
    reset_cfg()
    configure(CFG, saved=saved, dataset='coco2017', split='test')
    assert calls == []                                   # --cfg wins over a saved config


@pytest.mark.parametrize('kwargs,message', [
    (dict(cfg_file=None), 'give --cfg'),
    (dict(cfg_file=None, saved=lambda: False), 'give --cfg'),
    (dict(cfg_file='no/such.yaml'), '--cfg: no/such.yaml not found'),
    (dict(cfg_file=CFG, set_cfgs=['TRAIN.MAX_SIZE']), '--set takes KEY VALUE pairs'),
    (dict(cfg_file=CFG, set_cfgs=['TRAIN.DATASETS', '()'], split='train'),
     'No training dataset: pass --dataset'),
    (dict(cfg_file=CFG, set_cfgs=['TEST.DATASETS', '()'], split='test'),
     'give --dataset or set TEST.DATASETS'),
])
def test_user_errors_are_one_liners(fresh_cfg, kwargs, message):
    with pytest.raises(UserInputError) as e:
        configure(**kwargs)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_no_check_before_the_tools_step_fails(fresh_cfg):
    def after_merge(cfg):
        raise CliError('give --output_dir')
    with pytest.raises(CliError, match='output_dir'):
        configure(CFG, after_merge=after_merge, dataset='no_such_dataset', split='test')
    assert not fresh_cfg.is_immutable()
