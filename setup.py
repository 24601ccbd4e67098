"""Build and install pydetectron.

One extension, ``pydetectron._C``: the C++ CPU kernels under ``lib/pydetectron/ops/csrc`` always,
and the CUDA kernels (``*.cu``) as well when torch was built with CUDA and nvcc is found, or when
``FORCE_CUDA=1``.  torch is imported from the current interpreter: run
``pip install --no-build-isolation`` (``bash make.sh`` does) so that no isolated build
environment downloads another torch.
"""
import glob
import os

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as e:  # pragma: no cover - only reached on a broken set-up
    raise SystemExit(
        "pydetectron's build needs torch importable in this interpreter "
        "(run `bash make.sh`, which installs torch==2.13.0 when none is present): %s" % e)

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("lib", "pydetectron", "ops", "csrc")


def want_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None and torch.cuda.is_available()


def get_extensions():
    cpp = sorted(glob.glob(os.path.join(CSRC, "**", "*.cpp"), recursive=True))
    cu = sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))
    if not cpp:
        return []
    extra = {"cxx": ["-O3", "-std=c++17"]}
    define_macros = []
    ext_cls = CppExtension
    sources = cpp
    if want_cuda() and cu:
        ext_cls = CUDAExtension
        sources = cpp + cu
        define_macros.append(("WITH_CUDA", None))
        extra["nvcc"] = [
            "-O3", "-std=c++17", "--expt-relaxed-constexpr",
            "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        ]
    extra["cxx"].append("-fopenmp")
    return [ext_cls("pydetectron._C", sources, include_dirs=[os.path.join(HERE, CSRC)],
                    define_macros=define_macros, extra_compile_args=extra,
                    extra_link_args=["-fopenmp"])]


setup(
    name="pydetectron",
    version="0.1.0",
    description="A faithful, modern PyTorch implementation of Facebook's Detectron",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    package_data={"pydetectron": ["ops/csrc/**/*"]},
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    install_requires=["numpy", "pyyaml", "opencv-python-headless", "pycocotools", "matplotlib",
                      "packaging", "tqdm", "tensorboardX"],
)
