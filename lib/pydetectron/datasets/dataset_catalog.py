"""The catalog of datasets: name -> (image directory, COCO-format annotation file).

Every dataset is a COCO-format JSON plus a folder of images. Three ways to name one:

1. **A catalog name** — Detectron's entries (``coco_2014_train``, ``coco_2014_minival``,
   ``coco_2017_val``, ``keypoints_coco_2017_train``, ``voc_2007_trainval``, ...) laid out as
   Detectron lays them out under the data directory (``cfg.DATA_DIR``, default ``<repo>/data``)::

       data/coco/annotations/instances_train2017.json     data/coco/coco_train2017/*.jpg
       data/coco/annotations/person_keypoints_val2017.json data/coco/coco_val2017/*.jpg

   plus the built-in ``shapes_train``/``shapes_val`` and ``keypoints_shapes_train``/``_val``
   (generated under ``data/shapes`` on first use; see ``pydetectron.datasets.shapes``).

2. **Any COCO-format dataset from the command line or a YAML file, without editing code** — a
   dataset name of the form::

       coco_json:<annotation_file>                 images found next to it (see below)
       coco_json:<annotation_file>:<image_dir>     images in <image_dir>
       <annotation_file>.json                      same as coco_json:<annotation_file>

   It works wherever a dataset name does: ``--dataset coco_json:/data/pets/train.json:/data/pets/img``
   for the tools, or ``TRAIN.DATASETS: ('coco_json:/data/pets/train.json:/data/pets/img',)`` and
   ``TEST.DATASETS`` in a YAML config. Without an image directory it is the first existing one
   of ``<root>/images/<split>``, ``<root>/<split>``, ``<root>/coco_<split>``, ``<root>/images``,
   ``<json dir>/images`` and the JSON's own directory (when it holds images), where ``<root>`` is
   the folder above the JSON's folder and ``<split>`` the part of the JSON's name after its last
   ``_`` (``annotations/instances_val2017.json`` -> ``val2017``). Such a dataset is registered
   under a file-system-safe name, ``json_<json stem>_<hash of its path>``, which is the name
   outputs are written under.

3. **From Python**: ``register_dataset(name, image_dir, annotation_file, image_prefix='')``.

Registrations of kinds 2 and 3 are mirrored into the environment variable
``PYDETECTRON_REGISTERED_DATASETS`` (JSON), so processes this one starts (DataLoader workers,
multi-process inference) know the same names.

Tools resolve their ``--dataset`` argument with ``resolve_dataset_arg(arg, training)``, which also
accepts the shorthands ``coco2017``, ``keypoints_coco2017``, ``coco2014``, ``keypoints_coco2014``,
``shapes``, ``keypoints_shapes`` (train splits when training, val splits when testing) and
comma-separated lists, and returns the dataset names with the matching ``MODEL.NUM_CLASSES``
(number of categories + 1 for the background: 81 for COCO, 2 for keypoint datasets).
"""
import difflib
import hashlib
import json
import logging
import os
import re

logger = logging.getLogger(__name__)

# Entry keys (Detectron's)
IM_DIR = 'image_directory'
ANN_FN = 'annotation_file'
IM_PREFIX = 'image_prefix'
DEVKIT_DIR = 'devkit_directory'
RAW_DIR = 'raw_dir'
# A callable run before the files are used (the built-in generated datasets)
BUILDER = 'builder'

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

SPEC_PREFIX = 'coco_json:'

# spec string -> the name it was registered under
_ALIASES = {}


class UnknownDatasetError(KeyError):
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
    'voc_2007_trainval': {
        IM_DIR: 'VOC2007/JPEGImages',
        ANN_FN: 'VOC2007/annotations/voc_2007_trainval.json',
        DEVKIT_DIR: 'VOC2007/VOCdevkit2007'},
    'voc_2007_test': {
        IM_DIR: 'VOC2007/JPEGImages',
        ANN_FN: 'VOC2007/annotations/voc_2007_test.json',
        DEVKIT_DIR: 'VOC2007/VOCdevkit2007'},
    'voc_2012_trainval': {
        IM_DIR: 'VOC2012/JPEGImages',
        ANN_FN: 'VOC2012/annotations/voc_2012_trainval.json',
        DEVKIT_DIR: 'VOC2012/VOCdevkit2012'},
}

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
    _DATASETS[name] = entry
    _export_registration(name, entry)
    return name


_ENV_KEY = 'PYDETECTRON_REGISTERED_DATASETS'


def _export_registration(name, entry):
    """Mirror a registration into the environment, which child processes inherit."""
    try:
        registered = json.loads(os.environ.get(_ENV_KEY, '{}'))
    except ValueError:
        registered = {}
    registered[name] = entry
    os.environ[_ENV_KEY] = json.dumps(registered, sort_keys=True)


def _import_registrations():
    try:
        registered = json.loads(os.environ.get(_ENV_KEY, '{}'))
    except ValueError:
        logger.warning('ignoring %s: not valid JSON', _ENV_KEY)
        return
    for name, entry in registered.items():
        if isinstance(entry, dict) and IM_DIR in entry and ANN_FN in entry:
            _DATASETS.setdefault(name, entry)


_SPEC_RE = re.compile(r'^%s(?P<ann>.+?\.json)(?::(?P<im>.+))?$' % re.escape(SPEC_PREFIX))


def is_spec(name):
    """True for ``coco_json:...`` names and bare ``.json`` paths."""
    return isinstance(name, str) and (name.startswith(SPEC_PREFIX) or name.endswith('.json'))


def _infer_image_dir(ann_fn):
    ann_dir = os.path.dirname(os.path.abspath(ann_fn))
    root = os.path.dirname(ann_dir)
    stem = os.path.splitext(os.path.basename(ann_fn))[0]
    split = stem.rsplit('_', 1)[-1]
    candidates = [os.path.join(root, 'images', split), os.path.join(root, split),
                  os.path.join(root, 'coco_' + split), os.path.join(root, 'images'),
                  os.path.join(ann_dir, 'images')]
    for d in candidates:
        if os.path.isdir(d):
            return d
    if _holds_images(ann_dir):
        return ann_dir
    raise FileNotFoundError(
        "dataset %s%s: no image directory given and none found; tried %s and %s. Give it "
        "explicitly: %s%s:<image_dir>" % (SPEC_PREFIX, ann_fn, ', '.join(candidates), ann_dir,
                                          SPEC_PREFIX, ann_fn))


def _holds_images(d):
    exts = ('.jpg', '.jpeg', '.png', '.bmp')
    try:
        with os.scandir(d) as it:
            for i, e in enumerate(it):
                if e.name.lower().endswith(exts):
                    return True
                if i > 1000:
                    break
    except OSError:
        pass
    return False


def _register_spec(spec):
    if spec.startswith(SPEC_PREFIX):
        m = _SPEC_RE.match(spec)
        if m is None:
            raise ValueError("dataset %r: expected 'coco_json:<annotation_file.json>' or "
                             "'coco_json:<annotation_file.json>:<image_dir>'" % spec)
        ann_fn, im_dir = m.group('ann'), m.group('im')
    else:
        ann_fn, im_dir = spec, None
    ann_fn = os.path.abspath(os.path.expanduser(ann_fn))
    if not os.path.isfile(ann_fn):
        raise FileNotFoundError('dataset %r: annotation file %s not found' % (spec, ann_fn))
    im_dir = os.path.abspath(os.path.expanduser(im_dir)) if im_dir else _infer_image_dir(ann_fn)
    stem = re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.splitext(os.path.basename(ann_fn))[0])
    digest = hashlib.sha1(('%s|%s' % (ann_fn, im_dir)).encode('utf-8')).hexdigest()[:8]
    name = 'json_%s_%s' % (stem, digest)
    _DATASETS[name] = {IM_DIR: im_dir, ANN_FN: ann_fn}
    _export_registration(name, _DATASETS[name])
    _ALIASES[spec] = name
    return name


def canonical_name(name):
    """The catalog name of ``name``; a ``coco_json:``/path spec is registered on first use and
    maps to its ``json_<stem>_<hash>`` name."""
    if name in _ALIASES:
        return _ALIASES[name]
    if name in _DATASETS:
        return name
    if is_spec(name):
        return _register_spec(name)
    close = difflib.get_close_matches(name, list(_DATASETS) + list(_SHORTHANDS), n=3)
    raise UnknownDatasetError(
        'Unknown dataset name %r%s. Use a catalog name (see dataset_catalog.datasets()), '
        "'coco_json:<annotation_file>[:<image_dir>]', or register it with "
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
    with open(ann_fn, 'r') as f:
        data = json.load(f)
    if 'categories' not in data:
        raise ValueError("annotation file %s has no 'categories' field" % ann_fn)
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
        raise ValueError('--dataset: empty dataset argument')
    names = []
    for part in parts:
        if part in _SHORTHANDS:
            names.extend(_SHORTHANDS[part][0 if training else 1])
        else:
            names.append(canonical_name(part))
    counts = {n: get_num_classes(n) for n in names}
    if len(set(counts.values())) != 1:
        raise ValueError('--dataset %r: the datasets have different numbers of classes: %s'
                         % (dataset, counts))
    return tuple(names), counts[names[0]]


_import_registrations()
