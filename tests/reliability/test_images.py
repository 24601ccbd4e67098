"""Issue 16, items 3 and 6: one image reader (``utils/image_io.py``) for training, test_net and
infer_simple -- pixels as COCO stores them (EXIF orientation ignored), truncated or corrupt files
found and named -- and drawing a large photo at a bounded resolution."""
import struct
import time
import tracemalloc

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from pydetectron.roi_data.minibatch import ImageLoadError, load_image
from pydetectron.utils import vis as vis_utils
from pydetectron.utils.errors import ImageError, UserInputError
from pydetectron.utils.image_io import image_size, read_image


def _gradient(h=24, w=40):
    """An image whose orientation is visible: left-right and top-bottom ramps differ."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 6 % 256, y * 10 % 256, (x + 2 * y) % 256], -1).astype(np.uint8)


def _with_exif_orientation(jpeg, orientation):
    """The JPEG bytes with an APP1 Exif segment holding one tag: Orientation = ``orientation``
    (6: the camera was turned, viewers rotate the picture 90 degrees clockwise)."""
    ifd = struct.pack('<H', 1) + struct.pack('<HHIHH', 0x0112, 3, 1, orientation, 0) + \
        struct.pack('<I', 0)
    tiff = b'II*\x00' + struct.pack('<I', 8) + ifd
    payload = b'Exif\x00\x00' + tiff
    app1 = b'\xff\xe1' + struct.pack('>H', len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def _jpeg(im, quality=100):
    ok, buf = cv2.imencode('.jpg', im, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes()


def test_exif_orientation_is_ignored(tmp_path):
    im = _gradient()
    path = tmp_path / 'rotated.jpg'
    path.write_bytes(_with_exif_orientation(_jpeg(im), 6))
    # what cv2.imread does by default: the tag rotates the pixels (the reason for the reader)
    assert cv2.imread(str(path)).shape[:2] == (40, 24)
    got = read_image(str(path), expected_size=(24, 40))
    assert got.shape == (24, 40, 3)
    # same pixels as the untagged file (JPEG rounding only)
    plain = tmp_path / 'plain.jpg'
    plain.write_bytes(_jpeg(im))
    np.testing.assert_array_equal(got, cv2.imread(str(plain)))
    assert image_size(str(path)) == (24, 40)
    # the training loader's reader is the same
    entry = {'image': str(path), 'height': 24, 'width': 40, 'flipped': False, 'id': 3}
    np.testing.assert_array_equal(load_image(entry), got)


@pytest.mark.parametrize('kind,expected', [
    ('jpeg cut in the scan', 'is a truncated JPEG'),
    ('jpeg cut before the scan', 'is a JPEG without image data'),
    ('png without IEND', 'is a truncated PNG'),
    ('empty', 'is an empty file'),
    ('text', 'cannot be decoded'),
    ('missing', 'not found'),
    ('other size', 'is 40x24 (width x height) but its annotation says 40x25'),
])
def test_bad_files_are_named(tmp_path, kind, expected):
    im = _gradient()
    path = tmp_path / ('x.png' if 'png' in kind else 'x.jpg')
    jpeg = _jpeg(im)
    size = (24, 40)
    if kind == 'jpeg cut in the scan':
        # libjpeg decodes this with only a warning and grey pixels: not a good image
        path.write_bytes(jpeg[:len(jpeg) - 100])
        assert cv2.imread(str(path)) is not None
    elif kind == 'jpeg cut before the scan':
        path.write_bytes(jpeg[:jpeg.find(b'\xff\xda')])
    elif kind == 'png without IEND':
        ok, buf = cv2.imencode('.png', im)
        path.write_bytes(buf.tobytes()[:-12])
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'text':
        path.write_text('hello')
    elif kind == 'other size':
        path.write_bytes(jpeg)
        size = (25, 40)
    with pytest.raises(ImageError) as e:
        read_image(str(path), expected_size=size, what='image id 9')
    msg = str(e.value)
    assert expected in msg and str(path) in msg and 'image id 9' in msg, msg
    assert isinstance(e.value, UserInputError)
    # the training loader raises its own subclass (it replaces such images, counted)
    entry = {'image': str(path), 'height': size[0], 'width': size[1], 'flipped': False, 'id': 9}
    with pytest.raises(ImageLoadError):
        load_image(entry)


def test_jpeg_with_bytes_after_its_end_is_accepted(tmp_path):
    """Some cameras write data after the end-of-image marker: the image is complete."""
    im = _gradient()
    path = tmp_path / 'padded.jpg'
    path.write_bytes(_jpeg(im) + b'\x00' * 64 + b'vendor trailer')
    np.testing.assert_array_equal(read_image(str(path)), cv2.imdecode(
        np.frombuffer(_jpeg(im), np.uint8), cv2.IMREAD_COLOR))


def test_grayscale_and_16_bit_files_come_back_as_bgr_uint8(tmp_path):
    gray = _gradient()[:, :, 0]
    cv2.imwrite(str(tmp_path / 'g.png'), gray)
    cv2.imwrite(str(tmp_path / 'w.png'), gray.astype(np.uint16) * 257)
    for name in ('g.png', 'w.png'):
        got = read_image(str(tmp_path / name))
        assert got.dtype == np.uint8 and got.shape == (24, 40, 3), name
        np.testing.assert_array_equal(got[:, :, 1], gray)


# -- item 6: drawing at a bounded resolution ---------------------------------------------------- #

def _big_detections(h, w):
    boxes = np.array([[w * 0.1, h * 0.2, w * 0.5, h * 0.7, 0.95],
                      [w * 0.6, h * 0.1, w * 0.9, h * 0.4, 0.30]], np.float32)
    segms = []
    for b in boxes:
        m = np.zeros((h, w), np.uint8)
        m[int(b[1]):int(b[3]), int(b[0]):int(b[2])] = 1
        segms.append(mask_util.encode(np.asfortranarray(m)))
    kps = [np.array([[w * 0.3], [h * 0.4], [5.0], [0.9]], np.float32),
           np.array([[w * 0.7], [h * 0.2], [5.0], [0.9]], np.float32)]
    return [np.zeros((0, 5), np.float32), boxes], [[], segms], [[], kps]


def test_detections_for_drawing_scales_everything_the_same(tmp_path):
    h, w = 1200, 1800
    im = np.random.RandomState(0).randint(0, 255, (h, w, 3)).astype(np.uint8)
    cls_boxes, cls_segms, cls_keyps = _big_detections(h, w)
    small, boxes, segms, keyps, scale = vis_utils.detections_for_drawing(
        im, cls_boxes, cls_segms, cls_keyps, thresh=0.5, max_size=600)
    assert scale == pytest.approx(1 / 3) and small.shape == (400, 600, 3)
    np.testing.assert_array_equal(small, cv2.resize(im, (600, 400), interpolation=cv2.INTER_AREA))
    # only the detection above thresh, scaled; its mask shrunk to the drawing's size
    assert len(boxes[1]) == 1 and len(segms[1]) == 1 and len(keyps[1]) == 1
    np.testing.assert_allclose(boxes[1][0], [60, 80, 300, 280, 0.95], rtol=1e-6)
    mask = mask_util.decode(segms[1][0])
    assert mask.shape == (400, 600)
    assert mask[80:280, 60:300].all() and mask.sum() == 200 * 240
    np.testing.assert_allclose(keyps[1][0][:, 0], [180, 160, 5.0, 0.9], rtol=1e-6)
    # under the bound nothing changes but the threshold
    same, boxes2, _, _, s2 = vis_utils.detections_for_drawing(im, cls_boxes, cls_segms,
                                                              cls_keyps, 0.5, max_size=1800)
    assert s2 == 1.0 and same is im and boxes2[1][0].tolist() == cls_boxes[1][0].tolist()


@pytest.mark.slow
def test_drawing_a_large_photo_is_bounded(tmp_path):
    """A 24-megapixel photo is drawn at 3000 pixels: the output has that size, and the memory
    peak is that of a 6-megapixel drawing (matplotlib needs ~115 bytes per drawn pixel: ~0.7 GB
    here, measured; at full size this photo would take ~2.8 GB, a 100-megapixel one ~12 GB)."""
    h, w = 4000, 6000
    im = np.full((h, w, 3), 120, np.uint8)
    cls_boxes, cls_segms, cls_keyps = _big_detections(h, w)
    tracemalloc.start()
    t = time.time()
    small, boxes, segms, keyps, _ = vis_utils.detections_for_drawing(
        im, cls_boxes, cls_segms, cls_keyps, thresh=0.1, max_size=3000)
    out = vis_utils.vis_one_image(small[:, :, ::-1], 'big', str(tmp_path), boxes, segms, keyps,
                                  thresh=0.1, ext='png', out_when_no_box=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    elapsed = time.time() - t
    drawn = cv2.imread(out)
    assert max(drawn.shape[:2]) <= 3000
    assert peak < 1.0e9, (peak, im.nbytes)
    assert elapsed < 60
