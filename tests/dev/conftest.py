"""Fixtures of the tests of the developers' harness (dev/)."""
import os

import pytest


@pytest.fixture
def registry_env(monkeypatch):
    # the catalog mirrors coco_json: registrations into this variable; restore it afterwards
    monkeypatch.setenv('PYDETECTRON_REGISTERED_DATASETS',
                       os.environ.get('PYDETECTRON_REGISTERED_DATASETS', '{}'))
