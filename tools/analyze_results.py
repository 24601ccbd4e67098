"""Per-class AP table and precision-recall plot of a results file.

    python tools/analyze_results.py --dataset coco2017 \
        --results Outputs/.../test/bbox_coco_2017_val_results.json [--iou_type bbox]
    python tools/analyze_results.py --dataset coco2017 --results Outputs/.../detections.pkl \
        --iou_type segm --output_dir analysis

``--results`` is a COCO result JSON (what test_net.py writes) or a ``detections.pkl``; the table
(AP at IoU 0.50:0.95, AP50, AP75 per class, best first) is printed and saved as
``<output_dir>/per_class_ap_<iou_type>.txt``, the precision-recall curves at ``--iou`` of the
``--top_k`` classes with the most ground truth, plus their mean, as ``pr_<iou_type>.png``.
"""
import contextlib
import io
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))

from pydetectron.datasets import json_dataset_evaluator as evaluator  # noqa: E402
from pydetectron.datasets import dataset_catalog  # noqa: E402
from pydetectron.datasets.json_dataset import JsonDataset  # noqa: E402
from pydetectron.engine.cli import (  # noqa: E402
    ArgumentParser, check_input_file, check_output_dir, positive, run_tool)
from pydetectron.utils.errors import CliError, DatasetError  # noqa: E402
from pydetectron.utils import vis as vis_utils  # noqa: E402

_KEYS = {'bbox': 'bbox', 'segm': 'segmentation', 'keypoints': 'keypoints'}


def parse_args(argv=None):
    parser = ArgumentParser(description='Per-class AP and precision-recall curves')
    parser.add_argument('--dataset', required=True,
                        help='the ground truth (shorthand, catalog name or coco_json:<file>)')
    parser.add_argument('--results', required=True,
                        help='COCO result JSON, or a detections.pkl written by test_net.py')
    parser.add_argument('--iou_type', choices=sorted(_KEYS),
                        help='bbox, segm or keypoints (default: from the JSON; bbox for a .pkl)')
    parser.add_argument('--output_dir', help='where the table and plot go (default: next to '
                        '--results)')
    parser.add_argument('--iou', type=float, default=0.5,
                        help='IoU threshold of the precision-recall curves (0.50 .. 0.95)')
    parser.add_argument('--top_k', type=positive(int), default=10,
                        help='curves drawn for the classes with the most ground truth')
    return parser.parse_args(argv)


def _results_json(args, dataset, output_dir):
    """(path of a COCO result JSON, iou_type) for --results."""
    if args.results.endswith('.pkl'):
        from pydetectron.core.test_engine import load_object
        dets = load_object(args.results)
        iou_type = args.iou_type or 'bbox'
        res_file = os.path.join(output_dir, '%s_%s_results.json' % (iou_type, dataset.name))
        if iou_type == 'bbox':
            evaluator.write_coco_bbox_results_file(dataset, dets['all_boxes'], res_file)
        elif iou_type == 'segm':
            evaluator.write_coco_segms_results_file(dataset, dets['all_boxes'],
                                                    dets['all_segms'], res_file)
        else:
            evaluator.write_coco_keypoint_results_file(dataset, dets['all_boxes'],
                                                       dets['all_keyps'], res_file)
        return res_file, iou_type
    with open(args.results) as f:
        try:
            results = json.load(f)
        except ValueError as e:
            raise DatasetError('--results %s is not valid JSON (truncated?): %s'
                               % (args.results, e)) from e
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise DatasetError('--results %s is not a COCO results list (a JSON list of objects '
                           'with image_id, category_id, score and bbox / segmentation / '
                           'keypoints)' % args.results)
    iou_type = args.iou_type
    if iou_type is None:
        found = [t for t, k in _KEYS.items() if results and k in results[0]]
        iou_type = 'segm' if 'segm' in found else (found[0] if found else 'bbox')
    return args.results, iou_type


def main(argv=None):
    args = parse_args(argv)
    check_input_file(args.results, '--results')
    if not any(abs(args.iou - (0.5 + 0.05 * k)) < 1e-6 for k in range(10)):
        raise CliError('--iou %s: expected one of COCO\'s IoU thresholds 0.50, 0.55, ..., 0.95'
                       % args.iou)
    output_dir = args.output_dir or os.path.dirname(os.path.abspath(args.results))
    check_output_dir(output_dir)
    names, _ = dataset_catalog.resolve_dataset_arg(args.dataset, training=False)
    dataset = JsonDataset(names[0])
    res_file, iou_type = _results_json(args, dataset, output_dir)
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval's progress lines
        coco_eval = evaluator.do_coco_eval(dataset, res_file, iou_type, log=False)

    rows = sorted(evaluator.per_class_table(dataset, coco_eval), key=lambda r: -r[1])
    mean_ap, _ = evaluator.per_class_ap(coco_eval)
    width = max([len(r[0]) for r in rows] + [8])
    lines = ['{:<{w}}  {:>6}  {:>6}  {:>6}'.format('class', 'AP', 'AP50', 'AP75', w=width)]
    lines += ['{:<{w}}  {:6.3f}  {:6.3f}  {:6.3f}'.format(*r, w=width) for r in rows]
    lines.append('{:<{w}}  {:6.3f}  {:6.3f}  {:6.3f}'.format(
        'mean', mean_ap, float(coco_eval.stats[1]), float(coco_eval.stats[2]), w=width))
    table = '\n'.join(lines)
    print('%s results of %s on %s (%d classes with ground truth)'
          % (iou_type, res_file, dataset.name, len(rows)))
    print(table)
    table_file = os.path.join(output_dir, 'per_class_ap_%s.txt' % iou_type)
    with open(table_file, 'w') as f:
        f.write(table + '\n')

    recall, precision = evaluator.precision_recall_curves(coco_eval, args.iou)
    num_gt = {c: len(dataset.COCO.getAnnIds(catIds=[c], iscrowd=False))
              for c in coco_eval.params.catIds}
    order = sorted(range(len(coco_eval.params.catIds)),
                   key=lambda k: -num_gt[coco_eval.params.catIds[k]])
    id_to_name = {c['id']: c['name'] for c in dataset.COCO.loadCats(coco_eval.params.catIds)}
    curves = [(id_to_name[coco_eval.params.catIds[k]], recall, precision[k])
              for k in order[:args.top_k] if not np.isnan(precision[k]).all()]
    with np.errstate(invalid='ignore'):
        curves.append(('mean', recall, np.nanmean(precision, axis=0)))
    plot = vis_utils.vis_precision_recall(
        curves, os.path.join(output_dir, 'pr_%s.png' % iou_type),
        title='%s precision-recall at IoU %.2f' % (iou_type, args.iou))
    print('Wrote %s and %s' % (table_file, plot))


if __name__ == '__main__':
    sys.exit(run_tool(main, prog='analyze_results.py'))
