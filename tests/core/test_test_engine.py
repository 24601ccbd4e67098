"""One process's inference over a dataset (core.test_engine) on a small synthetic COCO dataset with
the fake model of test_im_detect: ranges and batches, the results containers, the results pickles,
images read ahead. Helpers here (``make_rect_dataset``, ``rect_setup``) serve the engine and tool
tests too."""
import importlib.util
import json
import os
import pickle
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from pydetectron.core import test_engine
from pydetectron.core.config import cfg, reset_cfg



def _load_sibling(name):
    """A module of this folder by path (works whichever directory pytest put on sys.path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + '.py')
    spec = importlib.util.spec_from_file_location('_pydetectron_tests_' + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FakeRCNN = _load_sibling('test_im_detect').FakeRCNN

# JSON category ids are not contiguous: contiguous class j maps to JSON id CATEGORY_IDS[j - 1].
CATEGORY_IDS = (1, 3, 7)
CATEGORY_NAMES = ('blue', 'green', 'red')  # fake class c + 1 is colour channel c (BGR)


def make_rect_dataset(root, num_images=6, seed=0):
    """Images of coloured rectangles and their COCO annotations -> 'coco_json:' dataset name."""
    rng = np.random.RandomState(seed)
    im_dir = os.path.join(root, 'images')
    os.makedirs(im_dir, exist_ok=True)
    images, anns = [], []
    for i in range(num_images):
        h, w = (120, 160) if i % 3 else (140, 100)
        im = np.zeros((h, w, 3), np.uint8)
        taken = np.zeros((h, w), bool)
        for _ in range(rng.randint(1, 4)):
            bw, bh = (int(v) for v in rng.randint(12, 40, size=2))
            x1, y1 = int(rng.randint(2, w - bw - 2)), int(rng.randint(2, h - bh - 2))
            x2, y2 = x1 + bw - 1, y1 + bh - 1
            if taken[y1 - 2:y2 + 3, x1 - 2:x2 + 3].any():
                continue  # keep objects apart: one connected component each
            taken[y1:y2 + 1, x1:x2 + 1] = True
            c = rng.randint(3)
            im[y1:y2 + 1, x1:x2 + 1, c] = 255
            anns.append({'id': len(anns) + 1, 'image_id': 10 + i, 'category_id': CATEGORY_IDS[c],
                         'bbox': [x1, y1, bw, bh], 'area': float(bw * bh), 'iscrowd': 0,
                         'segmentation': [[x1, y1, x2 + 1, y1, x2 + 1, y2 + 1, x1, y2 + 1]]})
        name = 'im%02d.png' % i
        cv2.imwrite(os.path.join(im_dir, name), im)
        images.append({'id': 10 + i, 'file_name': name, 'height': h, 'width': w})
    cats = [{'id': k, 'name': n} for k, n in zip(CATEGORY_IDS, CATEGORY_NAMES)]
    ann_fn = os.path.join(root, 'rects.json')
    with open(ann_fn, 'w') as f:
        json.dump({'images': images, 'annotations': anns, 'categories': cats}, f)
    return 'coco_json:%s:%s' % (ann_fn, im_dir)


@pytest.fixture
def rect_setup(tmp_path):
    reset_cfg()
    dataset = make_rect_dataset(str(tmp_path / 'data'))
    cfg.MODEL.NUM_CLASSES = 4
    cfg.MODEL.FASTER_RCNN = True
    cfg.MODEL.MASK_ON = True
    cfg.TEST.PRECOMPUTED_PROPOSALS = False
    cfg.TEST.DATASETS = (dataset,)
    cfg.TEST.SCALE = 120
    cfg.MRCNN.RESOLUTION = 14
    args = SimpleNamespace(output_dir=str(tmp_path / 'out'), cuda=False, quiet=True)
    yield dataset, args
    reset_cfg()


def _model():
    return FakeRCNN(deltas=(0., 0., 0., 0.))  # boxes = the rectangles exactly


def test_ranges_and_batches_give_the_same_detections(rect_setup):
    dataset_name, args = rect_setup
    model = _model()
    full = test_engine.test_net(args, dataset_name, None, args.output_dir, model=model)
    parts = [test_engine.test_net(args, dataset_name, None, args.output_dir, ind_range=r,
                                  model=model) for r in ((0, 4), (4, 6))]
    assert os.path.exists(os.path.join(args.output_dir, 'detection_range_0_4.pkl'))
    cfg.TEST.IMS_PER_BATCH = 4
    calls = model.forward_calls
    batched = test_engine.test_net(args, dataset_name, None, args.output_dir, model=model)
    assert model.forward_calls - calls == 2  # 6 images, 4 per forward pass
    for j in range(1, 4):
        merged = parts[0][0][j] + parts[1][0][j]
        for a, b, c in zip(full[0][j], merged, batched[0][j]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_evaluate_detections_file_refuses_other_pickles(rect_setup, tmp_path):
    dataset_name, _ = rect_setup
    other = str(tmp_path / 'rpn_proposals.pkl')
    test_engine.save_object({'boxes': [], 'scores': [], 'ids': []}, other)
    with pytest.raises(ValueError, match="rpn_proposals.pkl is not a detections file: it has "
                                         "no 'all_boxes'"):
        test_engine.evaluate_detections_file(other, dataset_name, str(tmp_path / 'eval'))


def test_results_pickles_refuse_code(tmp_path):
    good = tmp_path / 'good.pkl'
    test_engine.save_object({'all_boxes': [[], [np.zeros((1, 5), np.float32)]]}, str(good))
    assert test_engine.load_object(str(good))['all_boxes'][1][0].shape == (1, 5)
    bad = tmp_path / 'bad.pkl'
    with open(bad, 'wb') as f:
        pickle.dump({'x': SimpleNamespace(a=1)}, f)
    with pytest.raises(pickle.UnpicklingError, match='refusing'):
        test_engine.load_object(str(bad))


def test_empty_and_extend_results():
    all_boxes, all_segms, all_keyps = test_engine.empty_results(3, 2)
    all_boxes[1][0].append(1)
    assert all_boxes[1][1] == [] and all_boxes[2][0] == []  # no shared lists
    cls_boxes = [[], np.ones((1, 5)), np.zeros((0, 5))]
    test_engine.extend_results(1, all_boxes, cls_boxes)
    assert all_boxes[1][1] is cls_boxes[1] and all_boxes[0][1] == []


def test_read_ahead_keeps_the_batches_in_order_and_skips_unreadable(tmp_path):
    """test_net reads the next batches' images in threads: each batch still gets its own images
    in order, an unreadable file is None (and listed), and nothing is read twice."""
    entries = []
    for k in range(7):
        path = str(tmp_path / ('im%d.png' % k))
        im = np.full((8 + k, 10, 3), k * 20, np.uint8)
        if k == 3:
            with open(path, 'wb') as f:
                f.write(b'not an image')
        else:
            cv2.imwrite(path, im)
        entries.append({'image': path, 'height': 8 + k, 'width': 10, 'id': k})
    batches = [(0, [0, 1], None), (2, [2, 3, 4], None), (5, [5], None), (6, [6], None)]
    skipped = []
    got = list(test_engine._read_ahead(entries, batches, skipped, workers=3, ahead=2,
                                       prepare=lambda ims: [int(im[0, 0, 0]) for im in ims]))
    assert [b for b, _, _ in got] == batches
    # prepare() saw the batch's readable images, in order
    assert [p for _, _, p in got] == [[0, 20], [40, 80], [100], [120]]
    for (_, inds, _), ims, _ in got:
        for i, im in zip(inds, ims):
            if i == 3:
                assert im is None
            else:
                assert im.shape == (8 + i, 10, 3) and int(im[0, 0, 0]) == i * 20
    assert skipped == [entries[3]['image']]


def test_test_net_hands_the_model_the_blob_its_readers_made(rect_setup, monkeypatch):
    """The reader threads resize and pad each batch (``prepare_image_blob``) while the model
    works; what reaches im_detect_all_batch is the blob of exactly that batch's images."""
    from pydetectron.core import test as test_mod
    dataset_name, args = rect_setup
    cfg.TEST.IMS_PER_BATCH = 2
    seen = []
    real = test_engine.im_detect_all_batch

    def spy(model, ims, *a, **kw):
        blob = kw['blob']
        if blob is not None:
            data, im_info, scales = test_mod.get_image_blob(ims, cfg.TEST.SCALE,
                                                            cfg.TEST.MAX_SIZE)
            np.testing.assert_array_equal(blob.data.numpy(), data)
            np.testing.assert_array_equal(blob.im_info.numpy(), im_info)
            assert blob.im_scales == scales
        seen.append((len(ims), blob is not None))
        return real(model, ims, *a, **kw)

    monkeypatch.setattr(test_engine, 'im_detect_all_batch', spy)
    model = _model()
    with_blobs = test_engine.test_net(args, dataset_name, None, args.output_dir, model=model)
    assert seen == [(2, True)] * 3
    monkeypatch.setattr(test_engine, '_blob_maker', lambda model: None)
    without = test_engine.test_net(args, dataset_name, None, args.output_dir, model=model)
    assert seen[3:] == [(2, False)] * 3
    for j in range(1, 4):
        for a, b in zip(with_blobs[0][j], without[0][j]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_two_batches_in_flight_give_the_same_detections_in_order(rect_setup, monkeypatch):
    """A CUDA model gets two batches in flight (threads on one stream); forced here on the CPU:
    two batches do run at once, and every image gets its own detections, in roidb order."""
    import threading
    import time
    dataset_name, args = rect_setup
    model = _model()
    alone = test_engine.test_net(args, dataset_name, None, args.output_dir, model=model)
    running, most = [0], [0]
    lock = threading.Lock()
    real = test_engine.im_detect_all_batch

    def slow(*a, **kw):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        try:
            return real(*a, **kw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(test_engine, 'im_detect_all_batch', slow)
    monkeypatch.setattr(test_engine, '_pipelines', lambda model: 2)
    together = test_engine.test_net(args, dataset_name, None, args.output_dir, model=model)
    assert most[0] == 2
    for res_a, res_t in zip(alone, together):
        for j in range(1, 4):
            assert len(res_a[j]) == len(res_t[j]) == 6
            for a, b in zip(res_a[j], res_t[j]):
                if isinstance(a, np.ndarray):
                    np.testing.assert_array_equal(a, b)
                else:
                    assert a == b


def test_detection_threads_are_kept_across_test_net_calls(rect_setup, monkeypatch):
    """The threads that detect batches outlive a test_net call (cuDNN keeps its execution plans
    per thread): a second call runs on the threads of the first, and a failing batch leaves none
    of its batches running."""
    import threading
    dataset_name, args = rect_setup
    model = _model()
    real = test_engine.im_detect_all_batch
    threads = []

    def spy(*a, **kw):
        threads.append(threading.get_ident())
        return real(*a, **kw)

    monkeypatch.setattr(test_engine, 'im_detect_all_batch', spy)
    monkeypatch.setattr(test_engine, '_pipelines', lambda model: 2)
    test_engine.test_net(args, dataset_name, None, args.output_dir, model=model)
    first, calls = set(threads), len(threads)
    assert threading.get_ident() not in first and 1 <= len(first) <= 2
    del threads[:]
    test_engine.test_net(args, dataset_name, None, args.output_dir, model=model)
    assert set(threads) <= first and len(threads) == calls

    def fails_on_the_second(*a, **kw):
        threads.append(threading.get_ident())
        if len(threads) == 2:
            raise RuntimeError('a bug in a batch')
        return real(*a, **kw)

    del threads[:]
    monkeypatch.setattr(test_engine, 'im_detect_all_batch', fails_on_the_second)
    with pytest.raises(RuntimeError, match='a bug in a batch'):
        test_engine.test_net(args, dataset_name, None, args.output_dir, model=model)
    pool = test_engine._detection_pool(test_engine.model_device(model), 2)
    assert pool.submit(lambda: 1).result(timeout=5) == 1     # the pool still works


def _gpu_mask_rcnn_on_coco_mini(coco_mini):
    """(the coco_mini val2017 dataset spec, a CUDA Mask R-CNN R-50-FPN of random weights) with
    Detectron's config at TEST.SCALE 320 / MAX_SIZE 533 and TEST.SCORE_THRESH 0 (every image gets
    DETECTIONS_PER_IM detections); the caller resets the config."""
    import torch
    from pydetectron.core.config import assert_and_infer_cfg, merge_cfg_from_file, \
        merge_cfg_from_list
    from pydetectron.modeling.model_builder import Generalized_RCNN
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    dataset = 'coco_json:%s:%s' % (
        os.path.join(coco_mini, 'annotations', 'instances_val2017.json'),
        os.path.join(coco_mini, 'images', 'val2017'))
    reset_cfg()
    merge_cfg_from_file(os.path.join(root, 'configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml'))
    merge_cfg_from_list(['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False, 'TEST.SCALE', 320,
                         'TEST.MAX_SIZE', 533, 'TEST.SCORE_THRESH', 0.0, 'MODEL.NUM_CLASSES', 81])
    assert_and_infer_cfg()
    torch.manual_seed(0)
    return dataset, Generalized_RCNN().cuda().eval()


def _assert_same_results(got, want, images):
    total = 0
    for j in range(1, 81):
        for a, b in zip(got[0][j], want[0][j]):
            np.testing.assert_array_equal(a, b)
            total += len(a)
        for a, b in zip(got[1][j], want[1][j]):
            assert a == b
    assert total >= images * 100    # DETECTIONS_PER_IM each, ties at the 100th score kept


def _assert_close_results(got, want, images):
    """Detections of the same model through matrices of other shapes (cuBLAS's GEMMs round
    otherwise): the same detections, boxes and scores within 1e-5 relative (an H100 measured
    4.7e-6 at most), each mask's IoU with its counterpart >= 0.99."""
    from pycocotools import mask as mask_util
    total = 0
    for j in range(1, 81):
        for a, b in zip(got[0][j], want[0][j]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
            total += len(a)
        for a, b in zip(got[1][j], want[1][j]):
            assert len(a) == len(b)
            if a:
                ious = mask_util.iou(list(a), list(b), [0] * len(b)).diagonal()
                assert (ious >= 0.99).all(), ious.min()
    assert total >= images * 100


def test_front_graphs_are_asked_for_with_the_flag_at_one_image_a_batch(rect_setup, monkeypatch):
    """test_net asks conv_body_graphs for the front's graphs with --front_graphs and one image
    a batch only, and queues fronts ahead exactly when the front is what got routed."""
    import contextlib
    from pydetectron.core import cuda_graphs
    dataset_name, args = rect_setup
    asked, aheads = [], []

    @contextlib.contextmanager
    def graphs(model, enabled=True, max_graphs=16, front=False):
        asked.append(front)
        yield SimpleNamespace(routes='test_front' if front else 'Conv_Body')
    real = test_engine._detections

    def detections(*a):
        aheads.append(a[-1])
        return real(*a[:-1], False)         # (the fake model has no front to queue)
    monkeypatch.setattr(cuda_graphs, 'conv_body_graphs', graphs)
    monkeypatch.setattr(test_engine, '_detections', detections)
    for flag, batch in ((None, 1), (True, 1), (True, 2)):
        cfg.TEST.IMS_PER_BATCH = batch
        args.front_graphs = flag
        test_engine.test_net(args, dataset_name, None, args.output_dir, model=_model())
    assert asked == [False, True, False] and aheads == [False, True, False]


def test_fronts_queued_ahead_give_the_detections_of_one_image_at_a_time(coco_mini):
    """``_detections(..., ahead=True)`` (test_net --front_graphs: each image's
    front queued before the previous image's results are made) on a CPU Mask R-CNN of random
    weights over real photos: the batches come back in order with the boxes and masks of one
    image at a time, and a batch with no image to run (an unreadable file) stays in its
    place."""
    from collections import defaultdict

    import torch
    from pydetectron.core import test as core_test
    from pydetectron.core.config import merge_cfg_from_list
    from pydetectron.modeling.model_builder import Generalized_RCNN
    from pydetectron.utils.timer import Timer
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    reset_cfg()
    try:
        from pydetectron.core.config import assert_and_infer_cfg, merge_cfg_from_file
        merge_cfg_from_file(os.path.join(root, 'configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml'))
        merge_cfg_from_list(['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False, 'TEST.SCALE', 160,
                             'TEST.MAX_SIZE', 267, 'TEST.SCORE_THRESH', 0.0,
                             'TEST.DETECTIONS_PER_IM', 20, 'MODEL.NUM_CLASSES', 81])
        assert_and_infer_cfg()
        torch.manual_seed(0)
        model = Generalized_RCNN().eval()
        model.padded_test_front = True          # the front's forward, on the CPU
        folder = os.path.join(coco_mini, 'images', 'val2017')
        ims = [cv2.imread(os.path.join(folder, n)) for n in sorted(os.listdir(folder))[:4]]
        batches = [(i, [i], [im], None, core_test.prepare_image_blob([im]))
                   for i, im in enumerate(ims)]
        batches.insert(2, (9, [], [], None, None))             # its one image unreadable
        fronts = []
        real = core_test.FrontAhead

        def recorded(*a):
            fronts.append(real(*a))
            return fronts[-1]
        test_engine.FrontAhead = recorded
        try:
            got = list(test_engine._detections(model, iter(batches), None,
                                               defaultdict(Timer), 1, ahead=True))
        finally:
            test_engine.FrontAhead = real
        want = list(test_engine._detections(model, iter(batches), None, defaultdict(Timer), 1))
    finally:
        reset_cfg()
    assert len(fronts) == 4
    assert [k[0] for k, _ in got] == [k[0] for k, _ in want] == [0, 1, 9, 2, 3]
    for (_, g), (_, w) in zip(got, want):
        assert len(g) == len(w)
        for (boxes_g, segms_g, _), (boxes_w, segms_w, _) in zip(g, w):
            assert sum(len(b) for b in boxes_w) == 20
            for a, b in zip(boxes_g, boxes_w):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(segms_g, segms_w):
                assert a == b


@pytest.mark.cuda
def test_two_batches_in_flight_on_the_gpu_equal_one_at_a_time(coco_mini, tmp_path):
    """A CUDA Mask R-CNN (random weights) over real photos: test_net's two threads on one
    stream give the detections and masks of one batch at a time."""
    try:
        dataset, model = _gpu_mask_rcnn_on_coco_mini(coco_mini)
        args = SimpleNamespace(quiet=True, vis=False, cuda=True)
        one = test_engine.test_net(args, dataset, None, str(tmp_path), ind_range=(0, 6),
                                   model=model)
        one_at_a_time = test_engine._pipelines
        test_engine._pipelines = lambda model: 2
        try:
            two = test_engine.test_net(args, dataset, None, str(tmp_path), ind_range=(0, 6),
                                       model=model)
        finally:
            test_engine._pipelines = one_at_a_time
    finally:
        reset_cfg()
    _assert_same_results(two, one, 6)


def _record_graphs(monkeypatch):
    """The list of every ``cuda_graphs.GraphedForward`` made from now on (in this test)."""
    from pydetectron.core import cuda_graphs
    made = []

    class Recorded(cuda_graphs.GraphedForward):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)
    monkeypatch.setattr(cuda_graphs, 'GraphedForward', Recorded)
    return made


@pytest.mark.cuda
def test_cuda_graphs_give_the_eager_detections(coco_mini, tmp_path, monkeypatch):
    """The same model over 20 real photos (their blob sizes repeat, so graphs of the conv body
    are captured and replayed), twice: the detections and masks of the eager body, and none of
    the graphs' captures failed."""
    made = _record_graphs(monkeypatch)
    try:
        dataset, model = _gpu_mask_rcnn_on_coco_mini(coco_mini)
        eager = test_engine.test_net(SimpleNamespace(quiet=True, vis=False, cuda=True,
                                                     cuda_graphs=False),
                                     dataset, None, str(tmp_path), ind_range=(0, 20), model=model)
        graphed = [test_engine.test_net(SimpleNamespace(quiet=True, vis=False, cuda=True),
                                        dataset, None, str(tmp_path), ind_range=(0, 20),
                                        model=model) for _ in range(2)]
    finally:
        reset_cfg()
    assert len(made) == 2          # none for --no-cuda_graphs
    assert all(g.routes == 'Conv_Body' for g in made)
    assert all(g.captures > 0 and g.replays > 0 and not g.failed for g in made)
    for run in graphed:
        _assert_same_results(run, eager, 20)


@pytest.mark.cuda
def test_front_graphs_give_the_eager_front_detections(coco_mini, tmp_path, monkeypatch):
    """--front_graphs over 20 real photos, twice: graphs of the whole front (body, RPN, padded
    proposals, box head) captured and replayed, each image's front queued on a side stream
    before the previous image's results are made -- the detections and masks of the same front
    run eagerly one image at a time (``padded_test_front``), none of the captures failed; and
    the eager front's detections are those of the unpadded path, to rounding."""
    made = _record_graphs(monkeypatch)
    try:
        dataset, model = _gpu_mask_rcnn_on_coco_mini(coco_mini)

        def run(**flags):
            return test_engine.test_net(SimpleNamespace(quiet=True, vis=False, cuda=True, **flags),
                                        dataset, None, str(tmp_path), ind_range=(0, 20),
                                        model=model)
        unpadded = run(cuda_graphs=False)
        model.padded_test_front = True
        eager = run(cuda_graphs=False)
        del model.padded_test_front
        graphed = [run(front_graphs=True) for _ in range(2)]
    finally:
        reset_cfg()
    assert len(made) == 2 and all(g.routes == 'test_front' for g in made)
    assert all(g.captures > 0 and g.replays > 0 and not g.failed for g in made)
    for got in graphed:                 # the same kernels on the same shapes: the same bits
        _assert_same_results(got, eager, 20)
    # the unpadded front runs its box head on the RoIs there are, not the padded count
    _assert_close_results(unpadded, eager, 20)


def test_rpn_proposals_read_ahead_keep_ids_aligned_past_an_unreadable_image(rect_setup):
    """generate_rpn_on_range reads (and resizes) ahead like test_net: with two images a batch and
    the third image's file truncated, every image keeps its id, the truncated one gets no proposals
    and the others get what one image at a time gives."""
    dataset_name, args = rect_setup
    cfg.MODEL.RPN_ONLY = True
    cfg.MODEL.MASK_ON = False
    model = _model()
    boxes1, scores1, ids1, _ = test_engine.generate_rpn_on_range(args, dataset_name, None,
                                                                 args.output_dir, model=model)
    roidb = test_engine.get_roidb_and_dataset(dataset_name, None, None)[0]
    with open(roidb[2]['image'], 'rb') as f:
        head = f.read(64)                  # the PNG's header and size stay, its pixels go
    with open(roidb[2]['image'], 'wb') as f:
        f.write(head)
    cfg.TEST.IMS_PER_BATCH = 2
    boxes2, scores2, ids2, _ = test_engine.generate_rpn_on_range(args, dataset_name, None,
                                                                 args.output_dir, model=model)
    assert ids2 == ids1 == [e['id'] for e in roidb]
    assert boxes2[2].shape == (0, 4) and scores2[2].shape == (0,)
    assert boxes1[2].shape[0] > 0
    for k in (0, 1, 3, 4, 5):
        np.testing.assert_array_equal(boxes2[k], boxes1[k])
        np.testing.assert_array_equal(scores2[k], scores1[k])


def test_one_batch_in_flight_on_every_device(monkeypatch):
    """Two batches in flight measured slower on a GPU than one (see _pipelines): test_net keeps
    one, for a CPU and a CUDA model alike."""
    import torch
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    assert test_engine._pipelines(model) == 1                        # a CPU model
    monkeypatch.setattr(test_engine, 'model_device', lambda m: torch.device('cuda', 0))
    assert test_engine._pipelines(model) == 1
