"""pydetectron: a faithful, modern PyTorch implementation of Facebook's Detectron."""
__version__ = "0.1.0"
