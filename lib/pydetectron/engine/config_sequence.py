"""The config sequence every tool runs on the global ``cfg``, written once.

    1. the config: the YAML of ``--cfg``, else ``saved()`` (the config a checkpoint carries;
       it returns False when there is none: then ``--cfg`` is required); the tool's own keys
       (``overrides``); then ``--set`` pairs, the user's last word
    2. ``after_merge(cfg)``: the tool's step that reads the merged config before any dataset
       is opened (weights from TEST.WEIGHTS, the output folder, batch size and learning rate)
    3. the dataset, through ``dataset_catalog.resolve_dataset_arg``:
         split 'train'  ``--dataset``, else TRAIN.DATASETS -> TRAIN.DATASETS and
                        MODEL.NUM_CLASSES (a warning when the config's count is replaced)
         split 'test'   ``--dataset`` -> TEST.DATASETS and MODEL.NUM_CLASSES; without it,
                        TEST.DATASETS must be set (the evaluation resolves them)
         None           the tool looks after its classes itself (infer_simple)
    4. the tool's last keys (``extra``), ``cfg.CUDA``, ``assert_and_infer_cfg`` (the config is
       immutable from here) and ``check_config_values``

User errors are the package's one-line ``UserInputError`` family (the flag, file or key named).
Used by ``engine.launch`` (training), ``tools/test_net.py``, ``tools/infer_simple.py`` and the
developers' harness (``dev/bench/models.configure``).
"""
import logging

from pydetectron.engine.cli import check_input_file, check_set_pairs
from pydetectron.utils.errors import CliError

logger = logging.getLogger(__name__)

__all__ = ['configure']


def configure(cfg_file=None, set_cfgs=None, *, saved=None, overrides=(), after_merge=None,
              dataset=None, split=None, extra=(), cuda=False, check_values=True):
    """Run the sequence of the module docstring; returns the resolved dataset names (step 3),
    or None when no dataset was resolved.

    cfg_file: the ``--cfg`` YAML (or None); set_cfgs: the ``--set`` list (key, value pairs);
    saved: a callable merging a saved config (returns False when it has none);
    overrides / extra: flat [key, value, ...] lists merged before ``--set`` / before the
    assert; dataset: the ``--dataset`` value (a name, a tuple of names or a spec);
    split: 'train', 'test' or None; cuda: the value of ``cfg.CUDA``.
    """
    from pydetectron.core.config import (assert_and_infer_cfg, cfg, merge_cfg_from_file,
                                         merge_cfg_from_list)
    from pydetectron.core.config_checks import check_config_values
    if split not in ('train', 'test', None):
        raise ValueError("split must be 'train', 'test' or None, got %r" % (split,))
    check_input_file(cfg_file, '--cfg')
    check_set_pairs(set_cfgs)
    if cfg_file:
        merge_cfg_from_file(cfg_file)
    elif saved is None or not saved():
        raise CliError('give --cfg (no checkpoint with a saved config was given)')
    if overrides:
        merge_cfg_from_list(list(overrides))
    if set_cfgs:
        merge_cfg_from_list(set_cfgs)
    if after_merge is not None:
        after_merge(cfg)

    names = _resolve_dataset(cfg, dataset, split)

    if extra:
        merge_cfg_from_list(list(extra))
    cfg.CUDA = bool(cuda)   # an inferred key the tools set
    assert_and_infer_cfg()
    if check_values:
        check_config_values(cfg)
    return names


def _resolve_dataset(cfg, dataset, split):
    from pydetectron.core.config import merge_cfg_from_list
    from pydetectron.datasets import dataset_catalog
    if split == 'train':
        datasets = dataset if dataset else tuple(cfg.TRAIN.DATASETS)
        if not datasets:
            raise CliError('No training dataset: pass --dataset (e.g. coco2017, shapes, a COCO '
                           'json) or set TRAIN.DATASETS in the config')
        names, num_classes = dataset_catalog.resolve_dataset_arg(datasets, training=True)
        if cfg.MODEL.NUM_CLASSES not in (-1, num_classes):
            logger.warning('MODEL.NUM_CLASSES %d from the config replaced by %d from the '
                           'dataset %s', cfg.MODEL.NUM_CLASSES, num_classes, ', '.join(names))
        cfg.TRAIN.DATASETS = tuple(names)
        cfg.MODEL.NUM_CLASSES = num_classes
        return tuple(names)
    if split == 'test':
        if dataset:
            names, num_classes = dataset_catalog.resolve_dataset_arg(dataset, training=False)
            merge_cfg_from_list(['TEST.DATASETS', names, 'MODEL.NUM_CLASSES', num_classes])
            return tuple(names)
        if not cfg.TEST.DATASETS:
            raise CliError('give --dataset or set TEST.DATASETS in the config')
    return None
