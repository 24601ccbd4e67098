"""pydetectron.core.config_compat: the compatibility tables, Detectron's function names and the
restricted YAML loader, re-exported unchanged by pydetectron.core.config."""
import pytest

from pydetectron.core import config, config_compat


def test_public_names_are_the_same_objects_in_config():
    assert set(config_compat.__all__) == {
        "ConfigKeyError", "ConfigTypeError", "ConfigValueError", "FUNC_NAME_KEYS",
        "CANONICAL_FUNC_NAMES", "canonical_func_name", "load_cfg", "IGNORED_KEYS",
        "DETECTRON_PYTORCH_KEYS", "DETECTRON_PYTORCH_DEFAULTS", "is_detectron_pytorch_config",
        "repair_unindented_keys"}
    for name in config_compat.__all__:
        assert getattr(config, name) is getattr(config_compat, name), name
    # the merging code in config.py consults the very same tables
    assert config._RENAMED_KEYS is config_compat._RENAMED_KEYS
    assert config._DEPRECATED_KEYS is config_compat._DEPRECATED_KEYS


def test_renamed_key_converters_and_function_names():
    new_key, _, convert = config_compat._RENAMED_KEYS["TEST.SCALES"]
    assert new_key == "TEST.SCALE" and convert((600,)) == 600
    with pytest.raises(ValueError):
        convert((600, 800))  # several scales have no single-scale form: merging raises the hint
    new_key, _, convert = config_compat._RENAMED_KEYS["TRAIN.DATASET"]
    assert new_key == "TRAIN.DATASETS" and convert("a:b") == ("a", "b")
    assert config_compat.canonical_func_name(" detectron.modeling.head_builder.add_roi_2mlp_head") \
        == "fast_rcnn_heads.roi_2mlp_head"
    with pytest.raises(config.ConfigTypeError, match="function name must be a string"):
        config_compat.canonical_func_name(3)


def test_loader_reads_detectron_tags_and_refuses_others():
    loaded = config_compat.load_cfg("A: !!python/tuple [1, 2]\nB: {C: x}\n")
    assert loaded == {"A": (1, 2), "B": {"C": "x"}} and isinstance(loaded["A"], tuple)
    with pytest.raises(Exception, match="refusing to load Python name 'os.system'"):
        config_compat.load_cfg("A: !!python/name:os.system ''\n")
    with pytest.raises(config.ConfigTypeError, match="load_cfg expects a YAML string or file"):
        config_compat.load_cfg(42)
