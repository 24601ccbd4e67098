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

3. **A PASCAL VOC folder, without converting it** (``datasets/voc.py``)::

       voc:<root>                 <root>/Annotations, ImageSets/Main/trainval.txt, JPEGImages
       voc:<root>:<split>         ImageSets/Main/<split>.txt (train, val, test, ...)

   The XML files are converted on first use into a cached COCO-style JSON
   (``cfg.CACHE_DIR/voc``); the dataset is evaluated with the VOC metric (11-point AP when the
   folder is named VOC2007 or earlier, area under the curve otherwise) and registered as
   ``vocdir_<folder>_<split>_<hash>``. The catalog's ``voc_<year>_<split>`` entries use
   Detectron's layout (``data/VOC2007/annotations/voc_2007_trainval.json``, images in
   ``data/VOC2007/JPEGImages``, devkit in ``data/VOC2007/VOCdevkit2007``) when its JSON exists,
   and otherwise the VOC folder itself, found at ``data/VOC2007/VOCdevkit2007/VOC2007``,
   ``data/VOCdevkit/VOC2007`` or ``data/VOC2007``.

4. **A Cityscapes folder** (``datasets/cityscapes.py``): the catalog's
   ``cityscapes_fine_instanceonly_seg_<split>`` entries use Detectron's converted JSON when it
   exists, and otherwise the raw layout under ``data/cityscapes/raw`` (``leftImg8bit/<split>``,
   ``gtFine/<split>``), converted on first use; ``cityscapes:<root>[:<split>]`` names any such
   folder.

5. **From Python**: ``register_dataset(name, image_dir, annotation_file, image_prefix='')``.

Registrations of kinds 2 to 5 are mirrored into the environment variable
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

from pydetectron.utils.errors import DatasetError

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
VOC_PREFIX = 'voc:'
CITYSCAPES_PREFIX = 'cityscapes:'
# Entry keys of folder datasets (VOC, Cityscapes): the folder, the split, the evaluator
VOC_ROOT = 'voc_root'
CITYSCAPES_ROOT = 'cityscapes_root'
SPLIT = 'split'

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
    """True for ``coco_json:...``, ``voc:...`` and ``cityscapes:...`` names and bare ``.json``
    paths."""
    return isinstance(name, str) and (name.startswith((SPEC_PREFIX, VOC_PREFIX,
                                                       CITYSCAPES_PREFIX))
                                      or name.endswith('.json'))


def _get_cache_dir():
    try:
        from pydetectron.core.config import cfg
        cache_dir = cfg.get('CACHE_DIR', None) if hasattr(cfg, 'get') else None
    except ImportError:
        cache_dir = None
    return os.path.abspath(cache_dir) if cache_dir else os.path.join(get_data_dir(), 'cache')


def _folder_module(kind):
    if kind == VOC_ROOT:
        from pydetectron.datasets import voc
        return voc
    from pydetectron.datasets import cityscapes
    return cityscapes


def _register_folder(spec, prefix, root_key):
    """``voc:<root>[:<split>]`` / ``cityscapes:<root>[:<split>]`` -> a registered name."""
    module = _folder_module(root_key)
    rest = os.path.expanduser(spec[len(prefix):])
    if not rest:
        raise ValueError('dataset %r: expected %s<folder>[:<split>]' % (spec, prefix))
    root, split = rest, None
    if not os.path.isdir(rest) and ':' in rest:
        root, split = rest.rsplit(':', 1)
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError('dataset %r: folder %s not found' % (spec, root))
    split = split or module.default_split(root)
    module.check_layout(root, split)
    stem = re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.basename(root))
    digest = hashlib.sha1(('%s|%s' % (root, split)).encode('utf-8')).hexdigest()[:8]
    name = '%sdir_%s_%s_%s' % (prefix[:-1], stem, split, digest)
    _DATASETS[name] = {IM_DIR: module.image_dir(root, split),
                       ANN_FN: module.cache_path(root, split, _get_cache_dir()),
                       root_key: root, SPLIT: split}
    _export_registration(name, _DATASETS[name])
    _ALIASES[spec] = name
    return name


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
        module = _folder_module(root_key)
        entry.update({IM_DIR: module.image_dir(root, split),
                      ANN_FN: module.cache_path(root, split, _get_cache_dir()),
                      root_key: root, SPLIT: split})
    root_key = VOC_ROOT if VOC_ROOT in entry else CITYSCAPES_ROOT
    module = _folder_module(root_key)
    entry[ANN_FN] = module.to_coco_json(entry[root_key], entry[SPLIT], _get_cache_dir())


def folder_spec(name):
    """The ``voc:<root>:<split>`` / ``cityscapes:<root>:<split>`` spec a registered folder
    dataset was made from (what another process resolves to the same dataset), else None."""
    entry = _DATASETS.get(name, {})
    for prefix, root_key in ((VOC_PREFIX, VOC_ROOT), (CITYSCAPES_PREFIX, CITYSCAPES_ROOT)):
        if root_key in entry and name.startswith(prefix[:-1] + 'dir_'):
            return '%s%s:%s' % (prefix, entry[root_key], entry[SPLIT])
    return None


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
            raise DatasetError("dataset %r: expected 'coco_json:<annotation_file.json>' or "
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
    if isinstance(name, str) and name.startswith(VOC_PREFIX):
        return _register_folder(name, VOC_PREFIX, VOC_ROOT)
    if isinstance(name, str) and name.startswith(CITYSCAPES_PREFIX):
        return _register_folder(name, CITYSCAPES_PREFIX, CITYSCAPES_ROOT)
    if is_spec(name):
        return _register_spec(name)
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
