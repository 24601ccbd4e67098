"""Download Detectron's ImageNet-pretrained backbones into data/pretrained_model/.

    python tools/download_imagenet_weights.py                 # R-50.pkl and R-101.pkl
    python tools/download_imagenet_weights.py R-50-GN.pkl X-101-32x8d.pkl
    python tools/download_imagenet_weights.py --all

The files are the ones Detectron's MODEL_ZOO.md and GN configs link (converted MSRA ResNets,
FB's ResNeXts, the GroupNorm ResNets), in Detectron's pickle format, named as the configs'
RESNETS.IMAGENET_PRETRAINED_WEIGHTS name them. Each download
  * goes to ``<name>.part`` and is resumed from there (HTTP Range) when run again or when the
    connection drops (``--retries`` times);
  * is checked against the size the server announces and against the MD5 that Detectron
    publishes beside every file (``<url>.md5sum``; a warning when the server has none);
  * only then is renamed to its final name, so a file under its final name is always complete.
A checksum mismatch removes the partial file and exits non-zero. ``--base_url`` points at a
mirror with the same layout (the tests use a local server).
"""
import hashlib
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.join(ROOT, 'lib'))

from pydetectron.engine.cli import (  # noqa: E402
    ArgumentParser, check_output_dir, non_negative_int, positive, run_tool)
from pydetectron.utils.errors import CliError  # noqa: E402
DEFAULT_BASE_URL = 'https://dl.fbaipublicfiles.com/detectron'
DEFAULT_DEST = os.path.join(ROOT, 'data', 'pretrained_model')

# name -> path under the base URL (Detectron's MODEL_ZOO.md and GN project links)
WEIGHTS = {
    'R-50.pkl': 'ImageNetPretrained/MSRA/R-50.pkl',
    'R-101.pkl': 'ImageNetPretrained/MSRA/R-101.pkl',
    'R-50-GN.pkl': 'ImageNetPretrained/47261647/R-50-GN.pkl',
    'R-101-GN.pkl': 'ImageNetPretrained/47592356/R-101-GN.pkl',
    'X-101-32x8d.pkl': 'ImageNetPretrained/20171220/X-101-32x8d.pkl',
    'X-101-64x4d.pkl': 'ImageNetPretrained/FBResNeXt/X-101-64x4d.pkl',
    'X-152-32x8d-IN5k.pkl': 'ImageNetPretrained/25093814/X-152-32x8d-IN5k.pkl',
}
DEFAULT_NAMES = ('R-50.pkl', 'R-101.pkl')   # the seed's pair
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    pass


def _md5(path):
    h = hashlib.md5()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(CHUNK), b''):
            h.update(block)
    return h.hexdigest()


def fetch_md5(url, timeout):
    """The MD5 published at ``url + '.md5sum'``, or None when there is none."""
    try:
        with urllib.request.urlopen(url + '.md5sum', timeout=timeout) as r:
            text = r.read(4096).decode('ascii', 'replace')
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise
    m = re.search(r'\b([0-9a-fA-F]{32})\b', text)
    if not m:
        raise DownloadError('{}.md5sum does not hold an MD5 hash: {!r}'.format(url, text[:80]))
    return m.group(1).lower()


def _total_from_content_range(value):
    # 'bytes 100-999/1000' or 'bytes */1000'
    m = re.match(r'bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)', value or '')
    if not m or m.group(3) == '*':
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    return start, int(m.group(3))


def _progress(total, initial, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit='B', unit_scale=True, unit_divisor=1024,
                desc=desc, disable=None)


def download_once(url, part, timeout, desc):
    """Fetch (the rest of) ``url`` into ``part``; returns the total size the server announced
    (None if unknown). Raises on network errors; the bytes received so far stay in ``part``."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    req = urllib.request.Request(url)
    if have:
        req.add_header('Range', 'bytes={}-'.format(have))
    try:
        r = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            # Nothing left to send: the partial file may already be whole.
            _, total = _total_from_content_range(e.headers.get('Content-Range'))
            return total
        raise
    with r:
        if have and r.status == 206:
            start, total = _total_from_content_range(r.headers.get('Content-Range'))
            if start != have:
                raise DownloadError('{}: asked for bytes {}- but got a range starting at {}'
                                    .format(url, have, start))
            mode = 'ab'
        else:
            # No Range sent, or the server ignored it (200): start over.
            have, mode = 0, 'wb'
            length = r.headers.get('Content-Length')
            total = int(length) if length is not None else None
        bar = _progress(total, have, desc)
        try:
            with open(part, mode) as f:
                while True:
                    block = r.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    if bar is not None:
                        bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
        finally:
            if bar is not None:
                bar.close()
    size = os.path.getsize(part)
    if total is not None and size < total:
        # The server closed the connection early without an error: resumable like one.
        raise ConnectionError('connection closed after {} of {} bytes'.format(size, total))
    return total


def download(name, dest, base_url=DEFAULT_BASE_URL, retries=3, timeout=60, checksum=True,
             force=False, write=print):
    """Download weights ``name`` into ``dest``; returns the final path."""
    if name not in WEIGHTS:
        raise DownloadError('Unknown weights {!r}; available: {}'.format(
            name, ', '.join(sorted(WEIGHTS))))
    url = base_url.rstrip('/') + '/' + WEIGHTS[name]
    os.makedirs(dest, exist_ok=True)
    final = os.path.join(dest, name)
    part = final + '.part'
    md5 = fetch_md5(url, timeout) if checksum else None
    if checksum and md5 is None:
        write('warning: {} has no .md5sum; only the size is checked'.format(url))
    if os.path.exists(final) and not force:
        if md5 is not None and _md5(final) != md5:
            raise DownloadError('{} exists but its MD5 is not {} (damaged?); delete it or use '
                                '--force'.format(final, md5))
        write('{} already present{}'.format(final, ' (MD5 verified)' if md5 else ''))
        return final
    if force and os.path.exists(part):
        os.remove(part)
    if os.path.exists(part):
        write('Resuming {} from {} bytes'.format(name, os.path.getsize(part)))
    else:
        write('Downloading {} from {}'.format(name, url))
    total = None
    for attempt in range(retries + 1):
        try:
            total = download_once(url, part, timeout, name)
            break
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                socket.timeout, TimeoutError) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code < 500:
                raise DownloadError('{}: HTTP {} {}'.format(url, e.code, e.reason)) from e
            if attempt == retries:
                raise DownloadError('{}: download failed after {} attempts ({}); run again to '
                                    'resume from {}'.format(url, retries + 1, e, part)) from e
            write('{}: {}; retrying from {} bytes'.format(name, e, os.path.getsize(part)
                                                           if os.path.exists(part) else 0))
            time.sleep(min(2 ** attempt, 10) * 0.1)
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise DownloadError('{}: got {} bytes, the server announced {}; run again to resume '
                            'from {}'.format(name, size, total, part))
    if md5 is not None:
        got = _md5(part)
        if got != md5:
            os.remove(part)
            raise DownloadError('Checksum mismatch for {}: MD5 {} but {}.md5sum says {}; the '
                                'download was removed, run again'.format(name, got, url, md5))
    os.replace(part, final)
    write('Saved {} ({} bytes{})'.format(final, size, ', MD5 verified' if md5 else ''))
    return final


def parse_args(argv=None):
    p = ArgumentParser(description="Download Detectron's ImageNet-pretrained weights")
    p.add_argument('names', nargs='*', metavar='NAME',
                   help='weights to fetch ({}); default: {}'.format(
                       ', '.join(WEIGHTS), ' '.join(DEFAULT_NAMES)))
    p.add_argument('--all', action='store_true', help='fetch every file listed above')
    p.add_argument('--dest', default=DEFAULT_DEST, help='target folder (default: %(default)s)')
    p.add_argument('--base_url', default=DEFAULT_BASE_URL,
                   help='mirror with Detectron\'s layout (default: %(default)s)')
    p.add_argument('--retries', type=non_negative_int, default=3,
                   help='resumed retries after a dropped connection (default: %(default)s)')
    p.add_argument('--timeout', type=positive(float), default=60, help='socket timeout in seconds')
    p.add_argument('--no_checksum', action='store_true', help='skip the MD5 check')
    p.add_argument('--force', action='store_true', help='download again even if present')
    return p.parse_args(argv)


def main(argv=None):
    """Download; a bad name, flag or --dest raises ``CliError`` / ``OutputError`` (exit 2 through
    ``run_tool``); a failed download is reported and counted (exit 1)."""
    args = parse_args(argv)
    names = list(WEIGHTS) if args.all else (args.names or list(DEFAULT_NAMES))
    unknown = [n for n in names if n not in WEIGHTS]
    if unknown:
        raise CliError('Unknown weights {}; available: {}'.format(
            ', '.join(repr(n) for n in unknown), ', '.join(sorted(WEIGHTS))))
    if not re.match(r'^(https?|file)://', args.base_url):
        raise CliError('--base_url {!r}: expected an http://, https:// or file:// URL'.format(
            args.base_url))
    check_output_dir(args.dest, '--dest')
    failed = 0
    for name in names:
        try:
            download(name, args.dest, args.base_url, args.retries, args.timeout,
                     checksum=not args.no_checksum, force=args.force)
        except (DownloadError, OSError) as e:
            print('error: {}'.format(e), file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(run_tool(main, prog='download_imagenet_weights.py'))
