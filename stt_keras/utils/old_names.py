"""Earlier module paths kept for old imports, as the moved modules themselves."""

import importlib
import sys


def keep_old_names(old_package, new_package, names):
    """Registers each `old_package.name` in sys.modules as the module `new_package.name` itself.

    The same module object, not a copy: an old import gets the same classes, and monkeypatching
    through the old path patches the real module. The module `python -m` is running stays
    unregistered, so runpy finds its file on the old package's path and runs it as __main__.
    """
    argv = getattr(sys, "orig_argv", [])
    running = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else None
    for name in names:
        if f"{old_package}.{name}" != running:
            sys.modules[f"{old_package}.{name}"] = importlib.import_module(f"{new_package}.{name}")
