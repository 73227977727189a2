"""placeholder"""

from tests.interop.fidelity import Programs

PROGRAMS = Programs()
