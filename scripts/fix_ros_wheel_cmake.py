"""Point the CMake exports of PyPI ROS 2 message wheels at this interpreter.

The wheels' `export_*__rosidl_generator_pyExport.cmake` files carry the wheel builder's Python and
NumPy include directories (/opt/python/cpXY-cpXY/...), so any `rosidl_generate_interfaces()` in a
package built against them fails at generate time. Rewrite them to this interpreter's paths.
Idempotent: run it after every install of message wheels.
"""
import re
import sys
import sysconfig
from pathlib import Path

import numpy

BUILDER_PYTHON_INCLUDE = re.compile(r"/opt/python/cp\d+-cp\d+/include/python3\.\d+")
BUILDER_NUMPY_INCLUDE = re.compile(
    r"/opt/python/cp\d+-cp\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")


def main() -> int:
    prefix = Path(sys.prefix)
    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    fixed = 0
    for export in prefix.glob("share/*/cmake/export_*__rosidl_generator_pyExport.cmake"):
        text = export.read_text()
        new = BUILDER_NUMPY_INCLUDE.sub(numpy_include, text)
        new = BUILDER_PYTHON_INCLUDE.sub(python_include, new)
        if new != text:
            export.write_text(new)
            fixed += 1
    print(f"fix_ros_wheel_cmake: rewrote {fixed} export file(s) under {prefix}/share")
    return 0


if __name__ == "__main__":
    sys.exit(main())
