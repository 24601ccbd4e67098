"""tools/download_imagenet_weights.py against a local HTTP server on 127.0.0.1 (no internet):
fresh download with MD5, resume of a partial file with HTTP Range, a dropped connection retried,
a server that ignores Range, checksum mismatch, unknown names."""
import hashlib
import http.server
import os
import sys
import threading

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, '..', '..', 'tools')))

import download_imagenet_weights as dl  # noqa: E402

PAYLOAD = bytes(range(256)) * 4096 + b'tail'          # ~1 MiB, > one read chunk
REL = dl.WEIGHTS['R-50.pkl']


class Server:
    """Serves PAYLOAD at REL (with Range support, unless told otherwise) and its .md5sum."""

    def __init__(self):
        self.requests = []          # (path, Range header)
        self.md5 = hashlib.md5(PAYLOAD).hexdigest()
        self.drop_after = None      # close the connection after this many body bytes (once)
        self.honour_range = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.lstrip('/')
                server.requests.append((path, self.headers.get('Range')))
                if path == REL + '.md5sum':
                    body = '{}  R-50.pkl\n'.format(server.md5).encode()
                    self.send_response(200)
                    self.send_header('Content-Length', str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if path != REL:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get('Range')
                if rng and server.honour_range:
                    start = int(rng.split('=')[1].rstrip('-'))
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.send_header('Content-Range', 'bytes */%d' % len(PAYLOAD))
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header('Content-Range', 'bytes %d-%d/%d' % (
                        start, len(PAYLOAD) - 1, len(PAYLOAD)))
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if server.drop_after is not None:
                    n, server.drop_after = server.drop_after, None
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d' % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def fetch(server, dest, *extra):
    return dl.main(['R-50.pkl', '--dest', str(dest), '--base_url', server.url, '--timeout', '10']
                   + list(extra))


def test_fresh_download_verified(server, tmp_path):
    assert fetch(server, tmp_path) == 0
    assert (tmp_path / 'R-50.pkl').read_bytes() == PAYLOAD
    assert os.listdir(tmp_path) == ['R-50.pkl']            # no .part left
    assert (REL, None) in server.requests
    # a second run finds it, verifies it, downloads nothing
    n = len(server.requests)
    assert fetch(server, tmp_path) == 0
    assert [p for p, _ in server.requests[n:]] == [REL + '.md5sum']


def test_resume_partial_with_range(server, tmp_path):
    half = len(PAYLOAD) // 2
    (tmp_path / 'R-50.pkl.part').write_bytes(PAYLOAD[:half])
    assert fetch(server, tmp_path) == 0
    assert (tmp_path / 'R-50.pkl').read_bytes() == PAYLOAD
    assert (REL, 'bytes=%d-' % half) in server.requests
    assert (REL, None) not in server.requests               # only the rest was fetched


def test_dropped_connection_is_retried_from_where_it_stopped(server, tmp_path):
    server.drop_after = 300000
    assert fetch(server, tmp_path, '--retries', '2') == 0
    assert (tmp_path / 'R-50.pkl').read_bytes() == PAYLOAD
    ranges = [r for p, r in server.requests if p == REL]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith('bytes=')
    assert int(ranges[1].split('=')[1].rstrip('-')) >= 1     # resumed, not restarted


def test_complete_partial_file_gets_416_and_is_kept(server, tmp_path):
    (tmp_path / 'R-50.pkl.part').write_bytes(PAYLOAD)
    assert fetch(server, tmp_path) == 0
    assert (tmp_path / 'R-50.pkl').read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.honour_range = False
    (tmp_path / 'R-50.pkl.part').write_bytes(b'garbage' * 100)
    assert fetch(server, tmp_path) == 0
    assert (tmp_path / 'R-50.pkl').read_bytes() == PAYLOAD


def test_checksum_mismatch_fails_and_removes_download(server, tmp_path, capsys):
    server.md5 = '0' * 32
    assert fetch(server, tmp_path) == 1
    err = capsys.readouterr().err
    assert 'Checksum mismatch for R-50.pkl' in err and '0' * 32 in err
    assert hashlib.md5(PAYLOAD).hexdigest() in err
    assert os.listdir(tmp_path) == []                       # nothing under the final name


def test_truncated_download_without_retries_keeps_part(server, tmp_path, capsys):
    server.drop_after = 1000
    assert fetch(server, tmp_path, '--retries', '0') == 1
    assert 'run again to resume' in capsys.readouterr().err
    assert not (tmp_path / 'R-50.pkl').exists()
    assert (tmp_path / 'R-50.pkl.part').read_bytes() == PAYLOAD[:1000]


def test_unknown_name_lists_the_available_ones(tmp_path, capsys):
    from pydetectron.engine.cli import run_tool
    assert run_tool(dl.main, ['R-18.pkl', '--dest', str(tmp_path), '--base_url',
                              'http://127.0.0.1:9'], prog='download_imagenet_weights.py') == 2
    err = capsys.readouterr().err
    assert "Unknown weights 'R-18.pkl'" in err and 'X-152-32x8d-IN5k.pkl' in err


def test_catalog_matches_detectron_urls():
    assert set(dl.WEIGHTS) == {'R-50.pkl', 'R-101.pkl', 'R-50-GN.pkl', 'R-101-GN.pkl',
                               'X-101-32x8d.pkl', 'X-101-64x4d.pkl', 'X-152-32x8d-IN5k.pkl'}
    assert dl.DEFAULT_BASE_URL + '/' + dl.WEIGHTS['R-50.pkl'] == \
        'https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl'
