"""The build backend (pyproject.toml): setuptools, with a typed package in the wheel.

The repository is one file to vendor, fileslink.py, and setup.cfg installs it
as the module it is.  But PEP 561 lets only a package say that it is typed,
with a py.typed file beside it; for an installed module mypy reports "missing
library stubs or py.typed marker".  So the wheel holds

    fileslink/__init__.py   fileslink.py, byte for byte
    fileslink/__main__.py   so that `python -m fileslink` still runs the CLI
    fileslink/py.typed      the PEP 561 marker

setuptools builds it from a copy of the sources laid out that way in a
temporary directory, with setup.cfg's py_modules turned into packages there;
the checkout is left as it is.  The sdist has the repository's shape plus this
file, so a wheel built from it is the same.  Editable installs are plain
setuptools: they run the checkout's fileslink.py as a module.
"""

import configparser
import contextlib
import os
import shutil
import tempfile

from setuptools import build_meta
from setuptools.build_meta import (
    build_editable,
    get_requires_for_build_editable,
    prepare_metadata_for_build_editable,
)

__all__ = [
    "build_editable", "build_sdist", "build_wheel", "get_requires_for_build_editable",
    "get_requires_for_build_sdist", "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
]

# What setup.cfg reads, and this backend, which an sdist must carry.
SOURCES = ["fileslink.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE",
           ".ci/typed_wheel.py"]

MAIN = '''"""`python -m fileslink`: the command line."""

import sys

from fileslink import main

sys.exit(main())
'''


def _write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _as_sdist():
    # setuptools finds fileslink.py, README.md and LICENSE through setup.cfg;
    # this file it must be told about.
    _write("MANIFEST.in", "include .ci/typed_wheel.py\n")


def _as_package():
    os.mkdir("fileslink")
    os.replace("fileslink.py", os.path.join("fileslink", "__init__.py"))
    _write(os.path.join("fileslink", "__main__.py"), MAIN)
    _write(os.path.join("fileslink", "py.typed"), "")
    config = configparser.ConfigParser(interpolation=None)
    config.read("setup.cfg", encoding="utf-8")
    # Fail loudly, not with a wheel missing the module, if setup.cfg changed.
    if config.get("options", "py_modules").strip() != "fileslink":
        raise RuntimeError("setup.cfg: expected py_modules = fileslink")
    config.remove_option("options", "py_modules")
    config.set("options", "packages", "fileslink")
    config["options.package_data"] = {"fileslink": "py.typed"}
    with open("setup.cfg", "w", encoding="utf-8") as f:
        config.write(f)


@contextlib.contextmanager
def _staged(lay_out):
    """Work in a temporary copy of SOURCES laid out by lay_out(): setuptools
    writes its build/ and egg-info there, not in the checkout."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as stage:
        for name in SOURCES:
            os.makedirs(os.path.join(stage, os.path.dirname(name)), exist_ok=True)
            shutil.copy(name, os.path.join(stage, name))
        os.chdir(stage)
        try:
            lay_out()
            yield
        finally:
            os.chdir(here)


def get_requires_for_build_sdist(config_settings=None):
    with _staged(_as_sdist):
        return build_meta.get_requires_for_build_sdist(config_settings)


def build_sdist(sdist_directory, config_settings=None):
    sdist_directory = os.path.abspath(sdist_directory)
    with _staged(_as_sdist):
        return build_meta.build_sdist(sdist_directory, config_settings)


def get_requires_for_build_wheel(config_settings=None):
    with _staged(_as_package):
        return build_meta.get_requires_for_build_wheel(config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    wheel_directory = os.path.abspath(wheel_directory)
    with _staged(_as_package):
        return build_meta.build_wheel(wheel_directory, config_settings)
