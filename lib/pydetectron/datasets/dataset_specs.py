"""Datasets named by where they are, not by a catalog entry: the spec strings, parsed into catalog
entries, and the registrations handed on to child processes.

1. **Any COCO-format dataset from the command line or a YAML file, without editing code**::

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

2. **A PASCAL VOC folder, without converting it** (``datasets/voc.py``)::

       voc:<root>                 <root>/Annotations, ImageSets/Main/trainval.txt, JPEGImages
       voc:<root>:<split>         ImageSets/Main/<split>.txt (train, val, test, ...)

   The XML files are converted on first use into a cached COCO-style JSON
   (``cfg.CACHE_DIR/voc``); the dataset is evaluated with the VOC metric (11-point AP when the
   folder is named VOC2007 or earlier, area under the curve otherwise) and registered as
   ``vocdir_<folder>_<split>_<hash>``.

3. **A Cityscapes folder** (``datasets/cityscapes.py``): ``cityscapes:<root>[:<split>]`` names
   any folder of the raw layout (``leftImg8bit/<split>``, ``gtFine/<split>``), converted on first
   use and registered as ``cityscapesdir_<folder>_<split>_<hash>``.

Parsing a spec gives ``(name, entry)``; ``dataset_catalog`` stores it (the spec then works as a
dataset name everywhere) and mirrors every registration into the environment variable
``PYDETECTRON_REGISTERED_DATASETS`` (JSON, ``export_registration``), so processes this one
starts (DataLoader workers, multi-process inference) know the same names. ``folder_spec`` turns a
registered folder dataset back into the spec another process resolves to the same dataset.

Entry keys: ``IM_DIR``, ``ANN_FN``, ``IM_PREFIX`` are Detectron's; folder datasets add the
folder (``VOC_ROOT`` / ``CITYSCAPES_ROOT``) and the ``SPLIT``.
"""
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
# Entry keys of folder datasets (VOC, Cityscapes): the folder, the split, the evaluator
VOC_ROOT = 'voc_root'
CITYSCAPES_ROOT = 'cityscapes_root'
SPLIT = 'split'

SPEC_PREFIX = 'coco_json:'
VOC_PREFIX = 'voc:'
CITYSCAPES_PREFIX = 'cityscapes:'
_FOLDER_PREFIXES = {VOC_PREFIX: VOC_ROOT, CITYSCAPES_PREFIX: CITYSCAPES_ROOT}

ENV_KEY = 'PYDETECTRON_REGISTERED_DATASETS'

_SPEC_RE = re.compile(r'^%s(?P<ann>.+?\.json)(?::(?P<im>.+))?$' % re.escape(SPEC_PREFIX))


def is_spec(name):
    """True for ``coco_json:...``, ``voc:...`` and ``cityscapes:...`` names and bare ``.json``
    paths."""
    return isinstance(name, str) and (name.startswith((SPEC_PREFIX, VOC_PREFIX,
                                                       CITYSCAPES_PREFIX))
                                      or name.endswith('.json'))


def is_folder_spec(name):
    """True for ``voc:...`` and ``cityscapes:...`` names."""
    return isinstance(name, str) and name.startswith(tuple(_FOLDER_PREFIXES))


def _safe_name(kind, label, split, *parts):
    """``<kind>_<label>[_<split>]_<hash of parts>``: a name for files and folders."""
    stem = re.sub(r'[^A-Za-z0-9_.-]+', '_', label)
    digest = hashlib.sha1('|'.join(parts).encode('utf-8')).hexdigest()[:8]
    return '_'.join([kind, stem] + ([split] if split else []) + [digest])


# ----------------------------------------------------------------------------------------------
# coco_json: specs and .json paths
# ----------------------------------------------------------------------------------------------

def parse_coco_json_spec(spec):
    """``coco_json:<file.json>[:<image_dir>]`` or ``<file.json>`` -> ``(name, entry)``; the
    annotation file must exist, the image folder is inferred when not given."""
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
    name = _safe_name('json', os.path.splitext(os.path.basename(ann_fn))[0], None,
                      ann_fn, im_dir)
    return name, {IM_DIR: im_dir, ANN_FN: ann_fn}


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


# ----------------------------------------------------------------------------------------------
# voc: and cityscapes: folders
# ----------------------------------------------------------------------------------------------

def folder_module(root_key):
    """The module that reads a folder dataset: ``datasets.voc`` or ``datasets.cityscapes``."""
    if root_key == VOC_ROOT:
        from pydetectron.datasets import voc
        return voc
    from pydetectron.datasets import cityscapes
    return cityscapes


def folder_entry(root_key, root, split, cache_dir):
    """The entry of a folder dataset: its images, the (future) cached COCO-style JSON under
    ``cache_dir``, the folder and the split."""
    module = folder_module(root_key)
    return {IM_DIR: module.image_dir(root, split),
            ANN_FN: module.cache_path(root, split, cache_dir),
            root_key: root, SPLIT: split}


def parse_folder_spec(spec, cache_dir):
    """``voc:<root>[:<split>]`` / ``cityscapes:<root>[:<split>]`` -> ``(name, entry)``; the folder
    must exist and hold the split (its default split when none is given)."""
    prefix = next(p for p in _FOLDER_PREFIXES if spec.startswith(p))
    root_key = _FOLDER_PREFIXES[prefix]
    module = folder_module(root_key)
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
    name = _safe_name(prefix[:-1] + 'dir', os.path.basename(root), split, root, split)
    return name, folder_entry(root_key, root, split, cache_dir)


def folder_spec(name, entry):
    """The ``voc:<root>:<split>`` / ``cityscapes:<root>:<split>`` spec the folder dataset
    ``name`` (registered with ``entry``) was made from, else None."""
    for prefix, root_key in _FOLDER_PREFIXES.items():
        if root_key in entry and name.startswith(prefix[:-1] + 'dir_'):
            return '%s%s:%s' % (prefix, entry[root_key], entry[SPLIT])
    return None


# ----------------------------------------------------------------------------------------------
# Registrations seen by child processes
# ----------------------------------------------------------------------------------------------

def export_registration(name, entry):
    """Mirror a registration into the environment, which child processes inherit."""
    try:
        registered = json.loads(os.environ.get(ENV_KEY, '{}'))
    except ValueError:
        registered = {}
    registered[name] = entry
    os.environ[ENV_KEY] = json.dumps(registered, sort_keys=True)


def exported_registrations():
    """``{name: entry}`` of the registrations the parent process exported (invalid ones left
    out, an environment value that is not JSON ignored with a warning)."""
    try:
        registered = json.loads(os.environ.get(ENV_KEY, '{}'))
    except ValueError:
        logger.warning('ignoring %s: not valid JSON', ENV_KEY)
        return {}
    return {name: entry for name, entry in registered.items()
            if isinstance(entry, dict) and IM_DIR in entry and ANN_FN in entry}
