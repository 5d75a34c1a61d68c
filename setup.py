"""Build hook: the web app's third-party files (xterm.js) come from npm at build time.

``web/build-vendor.sh`` runs ``npm ci`` against ``web/package-lock.json`` and copies the
libraries' distributed files into ``web/vendor/``, which the package data lists.  A built
wheel therefore needs no Node to install.
"""

import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
MARKER = os.path.join(HERE, "web", "vendor", "xterm", "xterm.mjs")


class BuildWithVendor(build_py):
    def run(self) -> None:
        if not os.path.exists(MARKER):
            if shutil.which("npm") is None:
                raise SystemExit("building meshd needs npm for the web app's libraries "
                                 "(apt-get install nodejs npm), or a built wheel")
            subprocess.run(["sh", os.path.join(HERE, "web", "build-vendor.sh")], check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithVendor})
