"""AttrDict: the dictionary behind the global config `cfg`.

A plain `dict` whose keys can also be read and written as attributes
(`cfg.TRAIN.SCALES` is `cfg['TRAIN']['SCALES']`), and that can be frozen:
after `immutable(True)` every write at any depth raises, so a config cannot
drift once `assert_and_infer_cfg()` has validated it.

Copies (`copy.deepcopy`, pickling for data-loader workers) keep the frozen
state; `immutable(False)` unfreezes a tree again.
"""

# Attribute names that live in the instance __dict__ rather than as keys.
_IMMUTABLE = '_AttrDict__immutable'
_PATH = '_AttrDict__path'


class AttrDict(dict):
    """dict with attribute access and an optional recursive freeze."""

    def __init__(self, *args, **kwargs):
        object.__setattr__(self, _IMMUTABLE, False)
        object.__setattr__(self, _PATH, '')
        super().__init__(*args, **kwargs)

    # -- attribute access ---------------------------------------------------
    def __getattr__(self, name):
        # Only called when normal lookup fails, i.e. for config keys.
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                "config has no key '{}'".format(self._full_name(name))
            ) from None

    def __setattr__(self, name, value):
        self._check_mutable(name)
        self[name] = value

    def __delattr__(self, name):
        self._check_mutable(name)
        try:
            del self[name]
        except KeyError:
            raise AttributeError(self._full_name(name)) from None

    # -- item access (and every dict method that writes in place) ----------
    def __setitem__(self, key, value):
        self._check_mutable(key)
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._check_mutable(key)
        super().__delitem__(key)

    def clear(self):
        self._check_mutable(None)
        super().clear()

    def pop(self, *args):
        self._check_mutable(args[0] if args else None)
        return super().pop(*args)

    def popitem(self):
        self._check_mutable(None)
        return super().popitem()

    def setdefault(self, key, default=None):
        self._check_mutable(key)
        return super().setdefault(key, default)

    def update(self, *args, **kwargs):
        self._check_mutable(None)
        super().update(*args, **kwargs)

    # -- freezing -----------------------------------------------------------
    def immutable(self, is_immutable, _path=''):
        """Freeze (True) or unfreeze (False) this dict and every AttrDict
        nested in it. `_path` is the dotted prefix used in error messages."""
        object.__setattr__(self, _IMMUTABLE, bool(is_immutable))
        object.__setattr__(self, _PATH, _path)
        for key, value in dict.items(self):
            if isinstance(value, AttrDict):
                value.immutable(is_immutable, self._full_name(key))

    def is_immutable(self):
        return object.__getattribute__(self, _IMMUTABLE)

    def _full_name(self, key):
        path = object.__getattribute__(self, _PATH)
        return '{}.{}'.format(path, key) if path else str(key)

    def _check_mutable(self, key):
        if object.__getattribute__(self, _IMMUTABLE):
            where = self._full_name(key) if key is not None else (
                object.__getattribute__(self, _PATH) or 'cfg')
            raise AttributeError(
                "cannot modify config key '{}': the config is immutable "
                "(frozen by assert_and_infer_cfg(); call "
                "cfg.immutable(False) first if you really must)".format(where)
            )

    # -- copying and pickling -----------------------------------------------
    # The default dict-subclass protocol restores __dict__ (the frozen flag)
    # *before* re-inserting the items, which a frozen dict would refuse; so
    # rebuild from the items first and freeze last.
    def __reduce__(self):
        return (_rebuild_attrdict,
                (dict(self), self.is_immutable(),
                 object.__getattribute__(self, _PATH)))

    def __reduce_ex__(self, protocol):
        return self.__reduce__()

    def __repr__(self):
        return 'AttrDict({})'.format(dict.__repr__(self))


def _rebuild_attrdict(items, is_immutable, path=''):
    d = AttrDict(items)
    if is_immutable:
        d.immutable(True, path)
    return d
