"""Build script: cythonizes velocore/*.pyx with directives set once.

Environment switches (all off by default):
  VELOCORE_DEBUG=1     asserts on, -O0 -g, -Wall, Cython boundscheck on
  VELOCORE_SANITIZE=1  adds -fsanitize=address,undefined (see README, Development)
"""
import os
import shutil

from setuptools import Extension, setup
from setuptools.command.build_py import build_py
from Cython.Build import cythonize

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("VELOCORE_DEBUG") == "1"
SANITIZE = os.environ.get("VELOCORE_SANITIZE") == "1"

MODULES = ["_wal", "_pager", "_btree", "_mvcc", "_store"]

compile_args = ["-std=gnu11", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
link_args = ["-pthread"]
macros = []
if DEBUG or SANITIZE:
    compile_args += ["-O1", "-g", "-fno-omit-frame-pointer", "-UNDEBUG"]
else:
    compile_args += ["-O3"]
    macros.append(("NDEBUG", "1"))
if SANITIZE:
    compile_args += ["-fsanitize=address,undefined"]
    link_args += ["-fsanitize=address,undefined"]

directives = {
    "language_level": 3,
    "wraparound": False,
    "boundscheck": DEBUG,
    "cdivision": True,
    "initializedcheck": False,
    "embedsignature": True,
}

extensions = [
    Extension(
        f"velocore.{name}",
        [f"velocore/{name}.pyx"],
        include_dirs=["include"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=macros,
    )
    for name in MODULES
]


class build_py_with_headers(build_py):
    """Ships include/*.h inside the package so velocore.get_include() finds them."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "velocore", "include")
        os.makedirs(dest, exist_ok=True)
        for fname in os.listdir(os.path.join(HERE, "include")):
            if fname.endswith(".h"):
                shutil.copy(os.path.join(HERE, "include", fname), dest)


setup(
    ext_modules=cythonize(extensions, compiler_directives=directives, include_path=["velocore"]),
    cmdclass={"build_py": build_py_with_headers},
)
