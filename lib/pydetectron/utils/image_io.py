"""The one image reader of training, ``test_net.py`` and ``infer_simple.py``.

Pixels come back as COCO stores them: BGR uint8 (H, W, 3) in the file's stored orientation. The
EXIF orientation tag is ignored (``cv2.IMREAD_IGNORE_ORIENTATION``) because COCO's annotations
are drawn on the stored pixels; ``cv2.imread``'s default would rotate a tagged photo and every box
would land in the wrong place.

A file that is not a complete image is an ``ImageError`` naming it, never a half-grey picture:
libjpeg decodes a truncated JPEG with only a warning on stderr ("Premature end of JPEG file") and
fills the rest with grey, so a JPEG must end with its EOI marker (FF D9) after the last
start-of-scan (trailing bytes after EOI, which some cameras write, are accepted) and a PNG must
hold its IEND chunk. Callers decide what a bad image costs: the training loader replaces it
(``roi_data.loader``), the test tools skip it with a count.
"""
import os

import cv2
import numpy as np

from pydetectron.utils.errors import ImageError

_JPEG_SOI = b'\xff\xd8'
_JPEG_SOS = b'\xff\xda'
_JPEG_EOI = b'\xff\xd9'
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_IEND = b'IEND'

READ_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def check_complete(data):
    """None if ``data`` (the bytes of an image file) is complete as far as its format's end
    marker tells, else the reason it is not."""
    if data.startswith(_JPEG_SOI):
        sos = data.rfind(_JPEG_SOS)
        if sos < 0:
            return 'a JPEG without image data (no start-of-scan marker)'
        if data.find(_JPEG_EOI, sos) < 0:
            return 'a truncated JPEG (no end-of-image marker after its image data)'
    elif data.startswith(_PNG_SIGNATURE):
        if data.rfind(_PNG_IEND) < 0:
            return 'a truncated PNG (no IEND chunk)'
    return None


def read_image(path, expected_size=None, what=None, error_type=ImageError):
    """The image at ``path`` as BGR uint8 (H, W, 3), in stored orientation.

    ``expected_size``: (height, width) the annotation gives; another size is an error.
    ``what``: extra words for messages (e.g. 'image id 77'). Raises ``error_type`` (an
    ``ImageError``) naming the file for a missing, empty, truncated, undecodable or mis-sized
    image.
    """
    name = '{} ({})'.format(path, what) if what else str(path)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        raise error_type('image {} not found'.format(name))
    except OSError as e:
        raise error_type('cannot read image {}: {}'.format(name, e.strerror or e))
    if not data:
        raise error_type('image {} is an empty file'.format(name))
    problem = check_complete(data)
    if problem:
        raise error_type('image {} is {}'.format(name, problem))
    im = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), READ_FLAGS)
    if im is None or im.size == 0:
        raise error_type('image {} cannot be decoded (corrupt, or not an image format OpenCV '
                         'reads)'.format(name))
    if expected_size is not None:
        height, width = int(expected_size[0]), int(expected_size[1])
        if im.shape[0] != height or im.shape[1] != width:
            raise error_type('image {} is {}x{} (width x height) but its annotation says {}x{}'
                             .format(name, im.shape[1], im.shape[0], width, height))
    return im


def image_size(path):
    """(height, width) of an image file without decoding all of it when the header tells
    (JPEG, PNG), else by decoding; raises ``ImageError`` for an unreadable file. The EXIF
    orientation is ignored, as by ``read_image``."""
    try:
        with open(path, 'rb') as f:
            head = f.read(64 * 1024)
    except OSError as e:
        raise ImageError('cannot read image {}: {}'.format(path, e.strerror or e))
    if head.startswith(_PNG_SIGNATURE) and len(head) >= 24 and head[12:16] == b'IHDR':
        return int.from_bytes(head[20:24], 'big'), int.from_bytes(head[16:20], 'big')
    if head.startswith(_JPEG_SOI):
        size = _jpeg_size(path)
        if size is not None:
            return size
    return read_image(path).shape[:2]


def _jpeg_size(path):
    """(height, width) from the first start-of-frame marker of a JPEG, or None."""
    with open(path, 'rb') as f:
        f.read(2)
        while True:
            b = f.read(1)
            while b and b != b'\xff':
                b = f.read(1)
            while b == b'\xff':
                b = f.read(1)
            if not b:
                return None
            marker = b[0]
            if marker in (0xd8, 0x01) or 0xd0 <= marker <= 0xd7:
                continue
            length_bytes = f.read(2)
            if len(length_bytes) < 2:
                return None
            length = int.from_bytes(length_bytes, 'big')
            # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC)
            if 0xc0 <= marker <= 0xcf and marker not in (0xc4, 0xc8, 0xcc):
                data = f.read(5)
                if len(data) < 5:
                    return None
                return int.from_bytes(data[1:3], 'big'), int.from_bytes(data[3:5], 'big')
            f.seek(length - 2, os.SEEK_CUR)
