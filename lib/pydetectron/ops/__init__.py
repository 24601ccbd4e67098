"""Detectron's ops: RoIAlign, RoIPool, RoICrop, the NMS family and box IoU (C++ on CPU, CUDA on GPU)."""
from pydetectron.ops._ext import available as extension_available  # noqa: F401
