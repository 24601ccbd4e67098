"""Run a model on images and draw what it finds: boxes, class names with scores, translucent masks
with outlines and keypoints with the COCO skeleton; one picture per input and a JSON of the
detections (``<output_dir>/detections.json``).

    python tools/infer_simple.py --cfg configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml \
        --load_detectron model_final.pkl --image_dir demo --output_dir infer_outputs

``--dataset`` only names the classes: ``coco`` (default) or ``keypoints_coco`` for COCO models,
or any dataset name ``--dataset`` takes elsewhere (its annotation file gives the names).
"""
import json
import os
import sys
import time

import cv2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))

from pydetectron.core.test import im_detect_all  # noqa: E402
from pydetectron.engine import checkpoint_meta, config_sequence  # noqa: E402
from pydetectron.engine.compile_shapes import set_shape_buckets  # noqa: E402
from pydetectron.engine.inference import initialize_model_from_cfg  # noqa: E402
from pydetectron.engine.speed_options import add_speed_arguments  # noqa: E402
from pydetectron.engine.cli import (  # noqa: E402
    ArgumentParser, check_input_file, check_output_dir, check_set_pairs, non_negative_int,
    run_tool)
from pydetectron.utils import vis as vis_utils  # noqa: E402
from pydetectron.utils.errors import CliError, ImageError  # noqa: E402
from pydetectron.utils.image_io import read_image  # noqa: E402
from pydetectron.utils.logging import setup_logging  # noqa: E402

cv2.ocl.setUseOpenCL(False)

# Drawing a 100-megapixel photo at full size took 12 GB and 100 s (matplotlib canvas + every mask
# decoded at full size); 3000 pixels keep drawings sharp on any screen.
DEFAULT_MAX_DRAW_SIZE = 3000

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def parse_args(argv=None):
    parser = ArgumentParser(description='Detect objects in images and draw them')
    parser.add_argument('--cfg', dest='cfg_file',
                        help='config file (YAML); default: the config saved in --load_ckpt')
    parser.add_argument('--set', dest='set_cfgs', default=[], nargs='+',
                        help='config key/value pairs overriding the config file')
    parser.add_argument('--load_ckpt', help='checkpoint (.pth) to load (pydetectron or '
                        'Detectron.pytorch); default: TEST.WEIGHTS of the config')
    parser.add_argument('--load_detectron', help='Detectron weights (.pkl) to load')
    parser.add_argument('--image_dir', help='folder of images (other files are skipped)')
    parser.add_argument('--images', nargs='+', help='image files (instead of --image_dir)')
    parser.add_argument('--output_dir', default='infer_outputs', help='where the drawings go')
    parser.add_argument('--dataset', default=None,
                        help="class names: 'coco', 'keypoints_coco', or a dataset name; default: "
                        "the class names saved in --load_ckpt, else 'coco'")
    parser.add_argument('--thresh', type=float, default=0.7,
                        help='draw (and list) detections scoring at least this')
    parser.add_argument('--kp_thresh', type=float, default=2.0,
                        help='draw keypoints whose heatmap logit is above this')
    parser.add_argument('--output_ext', default='png', choices=('png', 'jpg', 'pdf'),
                        help='format of the drawings')
    parser.add_argument('--max_draw_size', type=non_negative_int, default=DEFAULT_MAX_DRAW_SIZE,
                        help='draw on a copy shrunk so that its longest side is at most this '
                        '(0: full resolution); detections.json keeps full-resolution '
                        'coordinates (default: %(default)s)')
    parser.add_argument('--no_cuda', dest='cuda', action='store_false', help='run on the CPU')
    add_speed_arguments(parser)
    return parser.parse_args(argv)


def get_class_and_keypoint_names(dataset):
    """(class names with '__background__' first, keypoint names) for --dataset."""
    if dataset in ('coco', 'coco2017', 'coco2014'):
        return list(vis_utils.COCO_CLASSES), list(vis_utils.COCO_KEYPOINTS)
    if dataset.startswith('keypoints_coco'):
        return ['__background__', 'person'], list(vis_utils.COCO_KEYPOINTS)
    from pydetectron.datasets import dataset_catalog
    from pydetectron.datasets.json_dataset import JsonDataset
    names, _ = dataset_catalog.resolve_dataset_arg(dataset, training=False)
    ds = JsonDataset(names[0])
    return list(ds.classes), list(ds.keypoints or vis_utils.COCO_KEYPOINTS)


def list_images(args, logger):
    """Image paths from --images or --image_dir (sorted), with a message for each skipped file."""
    if bool(args.image_dir) == bool(args.images):
        raise CliError('give exactly one of --image_dir and --images')
    if args.images:
        candidates = list(args.images)
    else:
        if not os.path.isdir(args.image_dir):
            raise CliError("--image_dir '{}' is not a directory".format(args.image_dir))
        candidates = [os.path.join(args.image_dir, f) for f in sorted(os.listdir(args.image_dir))]
        candidates = [c for c in candidates if os.path.isfile(c)]
    ims = []
    for path in candidates:
        if not os.path.isfile(path):
            raise CliError("--images: image '{}' not found".format(path))
        if os.path.splitext(path)[1].lower() not in IMAGE_EXTS:
            logger.info('Skipping %s: not an image file', path)
            continue
        ims.append(path)
    if not ims:
        raise CliError('no image files in {}'.format(args.image_dir or ' '.join(args.images)))
    return ims


def main(argv=None):
    logger = setup_logging(__name__)
    args = parse_args(argv)
    logger.info('Called with args: %s', args)
    if args.load_ckpt and args.load_detectron:
        raise CliError('give at most one of --load_ckpt and --load_detectron')
    if not 0.0 <= args.thresh <= 1.0:
        raise CliError('--thresh {}: expected a score in [0, 1]'.format(args.thresh))
    # Inputs first (seconds), before the model is built.
    check_input_file(args.cfg_file, '--cfg')
    check_set_pairs(args.set_cfgs)
    check_input_file(args.load_ckpt, '--load_ckpt')
    check_input_file(args.load_detectron, '--load_detectron')
    check_output_dir(args.output_dir)

    meta = checkpoint_meta.read_metadata(args.load_ckpt) if args.load_ckpt else {}
    found = {}  # filled once the config and --set are merged

    def weights_images_and_classes(cfg):
        m = checkpoint_meta.test_weights(args, meta)
        set_shape_buckets(cfg, args)
        found['images'] = list_images(args, logger)
        if args.dataset:
            classes, keypoint_names = get_class_and_keypoint_names(args.dataset)
            checkpoint_meta.check_dataset_classes(m.get('classes'), classes, args.load_ckpt,
                                                  args.dataset)
        elif m.get('classes'):
            classes = list(m['classes'])
            keypoint_names = list(m.get('keypoint_names') or vis_utils.COCO_KEYPOINTS)
        else:
            classes, keypoint_names = get_class_and_keypoint_names('coco')
        if cfg.MODEL.NUM_CLASSES == -1:
            cfg.MODEL.NUM_CLASSES = len(classes)
        elif cfg.MODEL.NUM_CLASSES != len(classes):
            raise CliError('the model has MODEL.NUM_CLASSES = {} but --dataset {} names {} '
                           'classes'.format(cfg.MODEL.NUM_CLASSES, args.dataset, len(classes)))
        found['classes'], found['keypoints'] = classes, keypoint_names

    # Weights come from the checkpoint: do not load ImageNet weights first.
    config_sequence.configure(
        args.cfg_file, args.set_cfgs,
        saved=lambda: checkpoint_meta.apply_checkpoint_config(meta, args.load_ckpt),
        after_merge=weights_images_and_classes,
        extra=['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False], cuda=args.cuda)
    im_list, classes, keypoint_names = found['images'], found['classes'], found['keypoints']

    model = initialize_model_from_cfg(args)
    os.makedirs(args.output_dir, exist_ok=True)
    records = []
    skipped = []
    for i, im_path in enumerate(im_list):
        try:
            im = read_image(im_path)
        except ImageError as e:
            skipped.append(im_path)
            logger.warning('Skipping %s (%d skipped so far)', e, len(skipped))
            continue
        t = time.time()
        cls_boxes, cls_segms, cls_keyps = im_detect_all(model, im, keypoint_names=keypoint_names)
        logger.info('%s: inference %.3fs', im_path, time.time() - t)
        im_name = os.path.splitext(os.path.basename(im_path))[0]
        t = time.time()
        draw_im, draw_boxes, draw_segms, draw_keyps, scale = vis_utils.detections_for_drawing(
            im, cls_boxes, cls_segms, cls_keyps, thresh=args.thresh,
            max_size=args.max_draw_size)
        out_path = vis_utils.vis_one_image(
            draw_im[:, :, ::-1], im_name, args.output_dir, draw_boxes, draw_segms, draw_keyps,
            dataset=classes, box_alpha=0.3, show_class=True, thresh=args.thresh,
            kp_thresh=args.kp_thresh, ext=args.output_ext, out_when_no_box=True,
            keypoint_names=keypoint_names)
        logger.info('%s: drawing %.3fs%s', im_path, time.time() - t,
                    ' (at %.3g of full size)' % scale if scale != 1.0 else '')
        records.append({'image': os.path.abspath(im_path), 'output': os.path.abspath(out_path),
                        'height': int(im.shape[0]), 'width': int(im.shape[1]),
                        'detections': vis_utils.detections_to_dicts(
                            cls_boxes, cls_segms, cls_keyps, classes, args.thresh)})
    json_path = os.path.join(args.output_dir, 'detections.json')
    with open(json_path, 'w') as f:
        json.dump({'thresh': args.thresh, 'images': records}, f)
    logger.info('Wrote %d drawings and %s', len(records), json_path)
    if skipped:
        logger.warning('Skipped %d of %d images that could not be read: %s', len(skipped),
                       len(im_list), ', '.join(skipped))


if __name__ == '__main__':
    sys.exit(run_tool(main, prog='infer_simple.py'))
