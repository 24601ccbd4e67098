"""Check a COCO-format dataset without training: what a user runs on a new dataset first.

    python tools/check_dataset.py --dataset coco_json:my/annotations.json:my/images
    python tools/check_dataset.py --dataset coco2017 --all_images

Prints the integrity report of ``pydetectron.datasets.coco_integrity`` -- every skipped
annotation and image named with its ids and the reason (``--max_named`` per kind), then one
summary line -- and what the roidb keeps for training: annotations dropped as Detectron drops
them (empty boxes, degenerate polygons) and images left without usable ground truth. Image files
are compared with the JSON's width / height on a sample spread over the dataset (``--sample``),
or all of them, fully decoded so truncated files show up too (``--all_images``).

Exit status: 0 when nothing was skipped, 1 when records were skipped (training would use the
rest), 2 when the dataset cannot be used at all (one line naming the file and the problem).
"""
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))

from pydetectron.engine.cli import ArgumentParser, non_negative_int, run_tool  # noqa: E402


def parse_args(argv=None):
    parser = ArgumentParser(description='Check a COCO-format dataset for integrity problems')
    parser.add_argument('--dataset', required=True,
                        help='a shorthand (coco2017, ...), a catalog name, a COCO json or '
                        'coco_json:<json>[:<image dir>]; several separated by commas')
    parser.add_argument('--train', action='store_true',
                        help='resolve shorthands to their training splits (default: evaluation '
                        'splits)')
    images = parser.add_mutually_exclusive_group()
    images.add_argument('--all_images', action='store_true',
                        help='decode every image file (finds truncated and mis-sized files)')
    images.add_argument('--sample', type=non_negative_int, default=None, metavar='N',
                        help='image files whose size is compared with the JSON (default: '
                        'the loader\'s sample size; 0: none)')
    parser.add_argument('--max_named', type=non_negative_int, default=20,
                        help='problems named one by one per kind (the rest are counted)')
    return parser.parse_args(argv)


def check(name, args, write=print):
    """Report on one catalog dataset; returns the number of skipped records."""
    from pydetectron.datasets.json_dataset import JsonDataset
    from pydetectron.datasets.roidb import filter_for_training
    if args.all_images:
        mode = 'all'
    elif args.sample is not None:
        mode = args.sample or 'none'
    else:
        mode = 'sample'
    ds = JsonDataset(name, check_images=mode)
    report = ds.integrity
    write('== {} ({}, images in {})'.format(name, ds.annotation_file, ds.image_directory))
    for line in report.lines(max_named=args.max_named):
        write(line)
    write(report.summary())
    roidb = ds.get_roidb(gt=True)
    num_boxes = sum(int((e['gt_classes'] > 0).sum()) for e in roidb)
    kept = filter_for_training(roidb)
    write('{}: roidb: {} images, {} ground-truth boxes; {} images usable for training'.format(
        name, len(roidb), num_boxes, len(kept)))
    return report.num_skipped


def main(argv=None):
    args = parse_args(argv)
    from pydetectron.core.config import assert_and_infer_cfg
    from pydetectron.datasets import dataset_catalog
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    # the integrity report is printed below, with its own limit of named problems
    logging.getLogger('pydetectron.datasets.coco_integrity').setLevel(logging.ERROR)
    names, _ = dataset_catalog.resolve_dataset_arg(args.dataset, training=args.train)
    assert_and_infer_cfg(make_immutable=False)
    skipped = 0
    for name in names:
        skipped += check(name, args)
    return 1 if skipped else 0


if __name__ == '__main__':
    sys.exit(run_tool(main, prog='check_dataset.py'))
