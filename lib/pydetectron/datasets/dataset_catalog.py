"""The catalog of datasets: name -> (image directory, COCO-format annotation file).

Every dataset is a COCO-format JSON plus a folder of images, named in one of these ways:

1. **A catalog name** — Detectron's entries (``coco_2014_train``, ``coco_2014_minival``,
   ``coco_2017_val``, ``keypoints_coco_2017_train``, ``voc_2007_trainval``, ...) laid out as
   Detectron lays them out under the data directory (``cfg.DATA_DIR``, default ``<repo>/data``)::

       data/coco/annotations/instances_train2017.json     data/coco/coco_train2017/*.jpg
       data/coco/annotations/person_keypoints_val2017.json data/coco/coco_val2017/*.jpg

   plus the built-in ``shapes_train``/``shapes_val`` and ``keypoints_shapes_train``/``_val``
   (generated under ``data/shapes`` on first use; see ``pydetectron.datasets.shapes``).

2. **A spec naming the files themselves** (``datasets/dataset_specs.py``), wherever a dataset
   name goes (``--dataset``, ``TRAIN.DATASETS`` / ``TEST.DATASETS`` in a YAML file):
   ``coco_json:<annotation_file>[:<image_dir>]`` or a bare ``<annotation_file>.json`` (any
   COCO-format dataset, registered as ``json_<stem>_<hash>``), ``voc:<root>[:<split>]`` (a
   PASCAL VOC folder, ``vocdir_<folder>_<split>_<hash>``) and ``cityscapes:<root>[:<split>]``
   (a raw Cityscapes folder). Folders are converted on first use to a cached COCO-style JSON.

3. **The catalog's VOC and Cityscapes entries**: ``voc_<year>_<split>`` uses Detectron's layout
   (``data/VOC2007/annotations/voc_2007_trainval.json``, images in ``data/VOC2007/JPEGImages``,
   devkit in ``data/VOC2007/VOCdevkit2007``) when its JSON exists, and otherwise the VOC folder
   itself, found at ``data/VOC2007/VOCdevkit2007/VOC2007``, ``data/VOCdevkit/VOC2007`` or
   ``data/VOC2007``; ``cityscapes_fine_instanceonly_seg_<split>`` uses Detectron's converted
   JSON when it exists, and otherwise the raw layout under ``data/cityscapes/raw``
   (``leftImg8bit/<split>``, ``gtFine/<split>``), converted on first use.

4. **From Python**: ``register_dataset(name, image_dir, annotation_file, image_prefix='')``.

Registrations of kinds 2 and 4 are mirrored into the environment variable
``PYDETECTRON_REGISTERED_DATASETS`` (JSON), so processes this one starts (DataLoader workers,
multi-process inference) know the same names.

Tools resolve their ``--dataset`` argument with ``resolve_dataset_arg(arg, training)``, which also
accepts the shorthands ``coco2017``, ``keypoints_coco2017``, ``coco2014``, ``keypoints_coco2014``,
``shapes``, ``keypoints_shapes`` (train splits when training, val splits when testing) and
comma-separated lists, and returns the dataset names with the matching ``MODEL.NUM_CLASSES``
(number of categories + 1 for the background: 81 for COCO, 2 for keypoint datasets).
"""
import difflib
import json
import logging
import os
import re

from pydetectron.datasets import dataset_specs
# The spec names and entry keys, importable from here as before
from pydetectron.datasets.dataset_specs import (  # noqa: F401
    ANN_FN, CITYSCAPES_PREFIX, CITYSCAPES_ROOT, IM_DIR, IM_PREFIX, SPEC_PREFIX, SPLIT, VOC_PREFIX,
    VOC_ROOT, is_spec)
from pydetectron.utils.errors import DatasetError

logger = logging.getLogger(__name__)

# Entry keys (Detectron's; IM_DIR, ANN_FN and IM_PREFIX are dataset_specs')
DEVKIT_DIR = 'devkit_directory'
RAW_DIR = 'raw_dir'
# A callable run before the files are used (the built-in generated datasets)
BUILDER = 'builder'

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

# spec string -> the name it was registered under
_ALIASES = {}


class UnknownDatasetError(DatasetError, KeyError):
    """A dataset name that is neither in the catalog nor a ``coco_json:`` spec (a user error:
    tools report it without a traceback)."""


def get_data_dir():
    """The data directory: ``cfg.DATA_DIR`` when the config defines it, else ``<repo>/data``."""
    try:
        from pydetectron.core.config import cfg
        data_dir = cfg.get('DATA_DIR', None) if hasattr(cfg, 'get') else getattr(cfg, 'DATA_DIR', None)
    except ImportError:
        data_dir = None
    return os.path.abspath(data_dir) if data_dir else os.path.join(_REPO_ROOT, 'data')


def _coco(im_dir, ann_fn, prefix=None):
    entry = {IM_DIR: 'coco/' + im_dir, ANN_FN: 'coco/annotations/' + ann_fn}
    if prefix:
        entry[IM_PREFIX] = prefix
    return entry


# Paths relative to the data directory, resolved when looked up (so cfg.DATA_DIR may change).
_DATASETS = {
    'coco_2014_train': _coco('coco_train2014', 'instances_train2014.json'),
    'coco_2014_val': _coco('coco_val2014', 'instances_val2014.json'),
    'coco_2014_minival': _coco('coco_val2014', 'instances_minival2014.json'),
    'coco_2014_valminusminival': _coco('coco_val2014', 'instances_valminusminival2014.json'),
    'coco_2015_test': _coco('coco_test2015', 'image_info_test2015.json'),
    'coco_2015_test-dev': _coco('coco_test2015', 'image_info_test-dev2015.json'),
    # 2017 train = 2014 train + valminusminival, 2017 val = 2014 minival; the 2017 test splits
    # reuse the 2015 test images, whose files carry a prefix
    'coco_2017_train': _coco('coco_train2017', 'instances_train2017.json'),
    'coco_2017_val': _coco('coco_val2017', 'instances_val2017.json'),
    'coco_2017_test': _coco('coco_test2015', 'image_info_test2017.json', 'COCO_test2015_'),
    'coco_2017_test-dev': _coco('coco_test2015', 'image_info_test-dev2017.json', 'COCO_test2015_'),
    'coco_stuff_train': _coco('coco_train2014', 'coco_stuff_train.json'),
    'coco_stuff_val': _coco('coco_val2014', 'coco_stuff_val.json'),
    'keypoints_coco_2014_train': _coco('coco_train2014', 'person_keypoints_train2014.json'),
    'keypoints_coco_2014_val': _coco('coco_val2014', 'person_keypoints_val2014.json'),
    'keypoints_coco_2014_minival': _coco('coco_val2014', 'person_keypoints_minival2014.json'),
    'keypoints_coco_2014_valminusminival':
        _coco('coco_val2014', 'person_keypoints_valminusminival2014.json'),
    'keypoints_coco_2015_test': _coco('coco_test2015', 'image_info_test2015.json'),
    'keypoints_coco_2015_test-dev': _coco('coco_test2015', 'image_info_test-dev2015.json'),
    'keypoints_coco_2017_train': _coco('coco_train2017', 'person_keypoints_train2017.json'),
    'keypoints_coco_2017_val': _coco('coco_val2017', 'person_keypoints_val2017.json'),
    'keypoints_coco_2017_test':
        _coco('coco_test2015', 'image_info_test2017.json', 'COCO_test2015_'),
    'keypoints_coco_2017_test-dev':
        _coco('coco_test2015', 'image_info_test-dev2017.json', 'COCO_test2015_'),
    'cityscapes_fine_instanceonly_seg_train': {
        IM_DIR: 'cityscapes/images',
        ANN_FN: 'cityscapes/annotations/instancesonly_gtFine_train.json',
        RAW_DIR: 'cityscapes/raw'},
    'cityscapes_fine_instanceonly_seg_val': {
        IM_DIR: 'cityscapes/images',
        # the filtered validation set: some contours of the full one do not convert
        ANN_FN: 'cityscapes/annotations/instancesonly_filtered_gtFine_val.json',
        RAW_DIR: 'cityscapes/raw'},
    'cityscapes_fine_instanceonly_seg_test': {
        IM_DIR: 'cityscapes/images',
        ANN_FN: 'cityscapes/annotations/instancesonly_gtFine_test.json',
        RAW_DIR: 'cityscapes/raw'},
}


def _voc(year, split):
    return {IM_DIR: 'VOC%s/JPEGImages' % year,
            ANN_FN: 'VOC%s/annotations/voc_%s_%s.json' % (year, year, split),
            DEVKIT_DIR: 'VOC%s/VOCdevkit%s' % (year, year)}


for _year, _split in (('2007', 'trainval'), ('2007', 'train'), ('2007', 'val'), ('2007', 'test'),
                      ('2012', 'trainval'), ('2012', 'train'), ('2012', 'val')):
    _DATASETS['voc_%s_%s' % (_year, _split)] = _voc(_year, _split)

# MODEL.NUM_CLASSES of catalog entries known without reading their JSON
_KNOWN_NUM_CLASSES = [(re.compile(r'^keypoints_coco_'), 2), (re.compile(r'^coco_(2014|2015|2017)_'), 81),
                      (re.compile(r'^voc_'), 21), (re.compile(r'^cityscapes_'), 9)]

# --dataset shorthands: name -> (training datasets, testing datasets)
_SHORTHANDS = {
    'coco2017': (('coco_2017_train',), ('coco_2017_val',)),
    'keypoints_coco2017': (('keypoints_coco_2017_train',), ('keypoints_coco_2017_val',)),
    'coco2014': (('coco_2014_train', 'coco_2014_valminusminival'), ('coco_2014_minival',)),
    'keypoints_coco2014': (('keypoints_coco_2014_train', 'keypoints_coco_2014_valminusminival'),
                           ('keypoints_coco_2014_minival',)),
    'shapes': (('shapes_train',), ('shapes_val',)),
    'keypoints_shapes': (('keypoints_shapes_train',), ('keypoints_shapes_val',)),
}


def _register_builtin_shapes():
    from pydetectron.datasets import shapes
    for name in shapes.DATASET_NAMES:
        im_dir, ann_fn = shapes.relative_paths(name)
        _DATASETS[name] = {IM_DIR: im_dir, ANN_FN: ann_fn, BUILDER: shapes.ensure_dataset}


_register_builtin_shapes()


def _abs(path):
    return path if os.path.isabs(path) else os.path.join(get_data_dir(), path)


# ----------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------

def register_dataset(name, image_dir, annotation_file, image_prefix=''):
    """Add (or replace) a COCO-format dataset under ``name``; relative paths are taken relative
    to the current directory. Registrations live in this process (and in forked workers); give
    other processes a ``coco_json:`` name instead."""
    if not isinstance(name, str) or not name:
        raise ValueError('register_dataset: name must be a non-empty string, got %r' % (name,))
    if name.startswith(SPEC_PREFIX) or name.endswith('.json'):
        raise ValueError("register_dataset: name %r looks like a 'coco_json:' spec or a path; "
                         "choose a plain name" % name)
    entry = {IM_DIR: os.path.abspath(image_dir), ANN_FN: os.path.abspath(annotation_file)}
    if image_prefix:
        entry[IM_PREFIX] = image_prefix
    if name in _DATASETS and _DATASETS[name] != entry:
        logger.info('register_dataset: replacing the catalog entry %s', name)
    return _store(name, entry)


def _store(name, entry):
    """Enter a dataset in the catalog of this process and of the processes it starts."""
    _DATASETS[name] = entry
    dataset_specs.export_registration(name, entry)
    return name


def _import_registrations():
    for name, entry in dataset_specs.exported_registrations().items():
        _DATASETS.setdefault(name, entry)


def _get_cache_dir():
    try:
        from pydetectron.core.config import cfg
        cache_dir = cfg.get('CACHE_DIR', None) if hasattr(cfg, 'get') else None
    except ImportError:
        cache_dir = None
    return os.path.abspath(cache_dir) if cache_dir else os.path.join(get_data_dir(), 'cache')


_CATALOG_VOC_RE = re.compile(r'^voc_(?P<year>\d{4})_(?P<split>.+)$')
_CATALOG_CITYSCAPES_RE = re.compile(r'^cityscapes_fine_instanceonly_seg_(?P<split>.+)$')


def _catalog_folder(name):
    """(root key, folder, split) of a catalog VOC / Cityscapes entry's original layout, or None
    when the folder is not there."""
    entry = _DATASETS[name]
    m = _CATALOG_VOC_RE.match(name)
    if m:
        year, split = m.group('year'), m.group('split')
        candidates = [os.path.join(_abs(entry[DEVKIT_DIR]), 'VOC' + year),
                      _abs(os.path.join('VOCdevkit', 'VOC' + year)), _abs('VOC' + year)]
        for root in candidates:
            if os.path.isdir(os.path.join(root, 'Annotations')):
                return VOC_ROOT, root, split
        return None
    m = _CATALOG_CITYSCAPES_RE.match(name)
    if m and RAW_DIR in entry:
        root = _abs(entry[RAW_DIR])
        if os.path.isdir(os.path.join(root, 'gtFine')):
            return CITYSCAPES_ROOT, root, m.group('split')
    return None


def _prepare_folder(name):
    """Convert a folder dataset to its cached JSON; a catalog VOC / Cityscapes entry whose
    Detectron JSON is missing is pointed at its original layout first."""
    entry = _DATASETS[name]
    if VOC_ROOT not in entry and CITYSCAPES_ROOT not in entry:
        if os.path.isfile(_abs(entry[ANN_FN])):
            return
        found = _catalog_folder(name)
        if found is None:
            return   # JsonDataset reports the missing JSON
        root_key, root, split = found
        entry.update(dataset_specs.folder_entry(root_key, root, split, _get_cache_dir()))
    root_key = VOC_ROOT if VOC_ROOT in entry else CITYSCAPES_ROOT
    module = dataset_specs.folder_module(root_key)
    entry[ANN_FN] = module.to_coco_json(entry[root_key], entry[SPLIT], _get_cache_dir())


def folder_spec(name):
    """The ``voc:<root>:<split>`` / ``cityscapes:<root>:<split>`` spec a registered folder
    dataset was made from (what another process resolves to the same dataset), else None."""
    return dataset_specs.folder_spec(name, _DATASETS.get(name, {}))


def get_voc_info(name):
    """``(VOC folder, split, use_07_metric)`` of a VOC dataset (a ``voc:`` spec or a catalog
    ``voc_<year>_<split>`` entry), or None for other datasets."""
    from pydetectron.datasets import voc
    name = canonical_name(name)
    entry = _DATASETS[name]
    if VOC_ROOT in entry:
        return entry[VOC_ROOT], entry[SPLIT], voc.use_07_metric_for(entry[VOC_ROOT])
    m = _CATALOG_VOC_RE.match(name)
    if not m:
        return None
    found = _catalog_folder(name)
    root = found[1] if found else os.path.join(get_devkit_dir(name), 'VOC' + m.group('year'))
    return root, m.group('split'), int(m.group('year')) < 2010


def get_cityscapes_info(name):
    """``(Cityscapes folder with gtFine/, split)`` of a Cityscapes dataset, or None."""
    name = canonical_name(name)
    entry = _DATASETS[name]
    if CITYSCAPES_ROOT in entry:
        return entry[CITYSCAPES_ROOT], entry[SPLIT]
    m = _CATALOG_CITYSCAPES_RE.match(name)
    if not m:
        return None
    return get_raw_dir(name), m.group('split')



def canonical_name(name):
    """The catalog name of ``name``; a ``coco_json:``/path spec is registered on first use and
    maps to its ``json_<stem>_<hash>`` name."""
    if name in _ALIASES:
        return _ALIASES[name]
    if name in _DATASETS:
        return name
    if dataset_specs.is_folder_spec(name):
        _ALIASES[name] = _store(*dataset_specs.parse_folder_spec(name, _get_cache_dir()))
        return _ALIASES[name]
    if is_spec(name):
        _ALIASES[name] = _store(*dataset_specs.parse_coco_json_spec(name))
        return _ALIASES[name]
    close = difflib.get_close_matches(name, list(_DATASETS) + list(_SHORTHANDS), n=3)
    raise UnknownDatasetError(
        'Unknown dataset name %r%s. Use a catalog name (see dataset_catalog.datasets()), '
        "'coco_json:<annotation_file>[:<image_dir>]', 'voc:<folder>[:<split>]', "
        "'cityscapes:<folder>[:<split>]', or register it with "
        'dataset_catalog.register_dataset(name, image_dir, annotation_file)'
        % (name, ' (did you mean %s?)' % ', '.join(close) if close else ''))


def _entry(name):
    return _DATASETS[canonical_name(name)]


# ----------------------------------------------------------------------------------------------
# Lookups (Detectron's API)
# ----------------------------------------------------------------------------------------------

def datasets():
    """Names of the registered datasets (spec aliases excluded)."""
    return [k for k in _DATASETS if k not in _ALIASES]


def contains(name):
    """True if ``name`` is a registered dataset or a valid spec."""
    try:
        canonical_name(name)
        return True
    except (KeyError, ValueError, FileNotFoundError):
        return False


def get_im_dir(name):
    return _abs(_entry(name)[IM_DIR])


def get_ann_fn(name):
    return _abs(_entry(name)[ANN_FN])


def get_im_prefix(name):
    return _entry(name).get(IM_PREFIX, '')


def get_devkit_dir(name):
    return _abs(_entry(name)[DEVKIT_DIR])


def get_raw_dir(name):
    return _abs(_entry(name)[RAW_DIR])


def prepare(name):
    """Make the dataset's files exist (generates the built-in datasets); returns its name."""
    name = canonical_name(name)
    builder = _DATASETS[name].get(BUILDER)
    if builder is not None:
        builder(name, get_data_dir())
    _prepare_folder(name)
    return name


# ----------------------------------------------------------------------------------------------
# Command-line resolution
# ----------------------------------------------------------------------------------------------

def get_num_classes(name):
    """MODEL.NUM_CLASSES for a dataset: its number of categories + 1 (background)."""
    name = canonical_name(name)
    for pattern, num in _KNOWN_NUM_CLASSES:
        if pattern.match(name):
            return num
    prepare(name)
    ann_fn = get_ann_fn(name)
    from pydetectron.datasets.json_dataset import read_coco_json
    data = read_coco_json(ann_fn)    # a DatasetError naming the file if it is not JSON
    if not isinstance(data, dict) or not isinstance(data.get('categories'), list):
        raise DatasetError("annotation file %s has no 'categories' list" % ann_fn)
    return len(data['categories']) + 1


def get_class_and_keypoint_names(name):
    """(class names with '__background__' first, keypoint names or None) of a dataset, in the
    contiguous-id order (sorted JSON category ids), read from its annotation file's categories.
    A COCO dataset whose file is not on this machine gets COCO's names."""
    name = prepare(name)
    ann_fn = get_ann_fn(name)
    if not os.path.isfile(ann_fn):
        from pydetectron.utils.vis import COCO_CLASSES, COCO_KEYPOINTS
        num = get_num_classes(name)
        if name.startswith('keypoints_coco') and num == 2:
            return ['__background__', 'person'], list(COCO_KEYPOINTS)
        if name.startswith('coco') and num == len(COCO_CLASSES):
            return list(COCO_CLASSES), None
        raise FileNotFoundError('annotation file of dataset %s not found: %s' % (name, ann_fn))
    with open(ann_fn, 'r') as f:
        cats = sorted(json.load(f).get('categories', []), key=lambda c: c['id'])
    with_kps = [c for c in cats if c.get('keypoints')]
    person = [c for c in with_kps if c['name'] == 'person']
    kps = list((person or with_kps)[0]['keypoints']) if with_kps else None
    return ['__background__'] + [c['name'] for c in cats], kps


def resolve_dataset_arg(dataset, training=True):
    """Resolve a tool's ``--dataset`` argument to ``(dataset_names, num_classes)``.

    ``dataset``: a shorthand (``coco2017``, ``keypoints_coco2017``, ``coco2014``,
    ``keypoints_coco2014``, ``shapes``, ``keypoints_shapes``), a catalog name, a
    ``coco_json:<annotation_file>[:<image_dir>]`` spec, a path to a COCO json, or several of
    these separated by commas (or given as a list). Shorthands give the training splits when
    ``training`` and the evaluation splits otherwise. Returns a tuple of catalog names and
    ``MODEL.NUM_CLASSES``; datasets with different class counts cannot be combined.
    """
    if isinstance(dataset, str):
        parts = [p.strip() for p in dataset.split(',') if p.strip()]
    else:
        parts = list(dataset)
    if not parts:
        raise DatasetError('--dataset: empty dataset argument')
    names = []
    for part in parts:
        if part in _SHORTHANDS:
            names.extend(_SHORTHANDS[part][0 if training else 1])
        else:
            names.append(canonical_name(part))
    counts = {n: get_num_classes(n) for n in names}
    if len(set(counts.values())) != 1:
        raise DatasetError('--dataset %r: the datasets have different numbers of classes: %s'
                         % (dataset, counts))
    return tuple(names), counts[names[0]]


_import_registrations()
