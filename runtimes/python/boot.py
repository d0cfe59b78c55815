"""Strata Python runtime entry point: ``/usr/bin/python3 -I -S /strata/runtime/python/boot.py``.

A script is compiled on every run; an imported module is loaded from its cached
``__pycache__/*.pyc``. So this stub imports ``bootstrap`` (byte-compiled by the
platform when it writes the runtime folder) and runs it. See bootstrap.py.
"""
import sys

sys.path.insert(0, __file__.rpartition("/")[0] or "/")  # -I leaves the script's dir off sys.path
import bootstrap  # noqa: E402

del sys.path[0], sys.modules["bootstrap"]  # as if bootstrap.py had been run directly
bootstrap.main()
