"""What a checkpoint says about itself: its config, its class names and its dataset.

Training checkpoints carry, besides the weights (``engine.checkpoint``):
    'cfg'             the resolved config as YAML (written by ``launch``)
    'classes'         class names, '__background__' first, in the model's class order
    'keypoint_names'  the dataset's keypoint names (keypoint models), else None
    'dataset'         the training dataset names (catalog names, comma-separated) and
    'dataset_arg'     the --dataset the run was given (a shorthand or coco_json:... spec)
so ``test_net.py --load_ckpt X`` and ``infer_simple.py --load_ckpt X`` need neither ``--cfg``
nor ``--dataset``: ``apply_checkpoint_config`` merges the saved config, 'classes' gives the
names to draw, and ``check_dataset_classes`` stops with one line when an explicit dataset's
classes are not the model's.
"""
import logging

logger = logging.getLogger(__name__)

__all__ = ['training_metadata', 'read_metadata', 'apply_checkpoint_config',
           'check_dataset_classes', 'test_weights']

# Keys of a saved config that belong to the machine that trained, not to the model.
_MACHINE_KEYS = ('ROOT_DIR', 'DATA_DIR', 'CACHE_DIR', 'OUTPUT_DIR', 'CUDA', 'NUM_GPUS')


def training_metadata(dataset_names, dataset_arg=None):
    """The self-describing entries for a run training on ``dataset_names``. A dataset whose
    names cannot be read (no annotation file here) gives 'classes': None."""
    from pydetectron.datasets import dataset_catalog
    classes = keypoints = None
    try:
        classes, keypoints = dataset_catalog.get_class_and_keypoint_names(dataset_names[0])
    except (OSError, ValueError, KeyError) as e:
        logger.warning('Class names of %s not saved in the checkpoints: %s', dataset_names[0], e)
    return {'classes': classes, 'keypoint_names': keypoints,
            'dataset': ','.join(dataset_names),
            'dataset_arg': dataset_arg if isinstance(dataset_arg, str) else None}


def read_metadata(path, flag='--load_ckpt'):
    """{'cfg', 'classes', 'keypoint_names', 'dataset', 'dataset_arg'} of checkpoint ``path``
    (values None where it has none, e.g. a Detectron.pytorch checkpoint). A file that cannot be
    read is the one-line CheckpointError naming ``flag`` and the file.

    The loaded checkpoint is kept for the weights loader (``initial_weights.read_torch_file``
    with ``keep``): the tool that asks for the metadata loads the same file's weights next, and
    the file is read once."""
    from pydetectron.engine.initial_weights import read_torch_file
    ckpt = read_torch_file(path, flag=flag, keep=True)
    if not isinstance(ckpt, dict):
        ckpt = {}
    return {k: ckpt.get(k) for k in ('cfg', 'classes', 'keypoint_names', 'dataset',
                                      'dataset_arg')}


def apply_checkpoint_config(meta, path):
    """Merge the config saved in checkpoint ``path`` (``meta`` from ``read_metadata``) into the
    global cfg; returns False when it has none. The training machine's paths and device
    settings are not taken."""
    from pydetectron.core.config import load_cfg, merge_cfg_from_cfg
    text = meta.get('cfg')
    if not text:
        return False
    saved = load_cfg(text)
    for key in _MACHINE_KEYS:
        saved.pop(key, None)
    merge_cfg_from_cfg(saved)
    logger.info('Config taken from the checkpoint %s', path)
    return True


def check_dataset_classes(model_classes, dataset_classes, ckpt_path, dataset):
    """Raise CheckpointError (one line) when ``dataset``'s classes are not the checkpoint's."""
    from pydetectron.engine.checkpoint import CheckpointError
    if model_classes is None or dataset_classes is None:
        return
    if list(model_classes) == list(dataset_classes):
        return
    def show(names):
        names = list(names)[1:]
        return ', '.join(names[:5]) + (', ...' if len(names) > 5 else '')
    raise CheckpointError(
        'dataset {} has {} classes ({}) but the model in {} was trained on {} classes ({}); '
        'give the dataset the model was trained for'.format(
            dataset, len(dataset_classes) - 1, show(dataset_classes), ckpt_path,
            len(model_classes) - 1, show(model_classes)))


def test_weights(args, meta, needs_weights=True):
    """The weights of the test tools (test_net.py, infer_simple.py), once the config is merged
    (``engine.config_sequence``, after ``--cfg`` or the checkpoint's config and ``--set``):
    without a weights flag (and ``needs_weights``), TEST.WEIGHTS, as Detectron's tools default
    to it. Sets ``args.load_ckpt`` / ``args.load_detectron`` accordingly; returns the
    checkpoint's metadata (``meta``, or that of TEST.WEIGHTS' checkpoint; {} for a pkl)."""
    from pydetectron.core.config import cfg
    from pydetectron.engine.initial_weights import resolve_weights_url
    from pydetectron.utils.errors import CliError
    if needs_weights and not (args.load_ckpt or args.load_detectron):
        if not cfg.TEST.WEIGHTS:
            raise CliError('give --load_ckpt or --load_detectron (or set TEST.WEIGHTS in the '
                           'config)')
        weights = resolve_weights_url(cfg.TEST.WEIGHTS, 'TEST.WEIGHTS')
        if weights.endswith('.pkl'):
            args.load_detectron = weights
        else:
            args.load_ckpt = weights
            meta = read_metadata(weights)
    return meta
