"""What a stage command imports at start-up.

Every DVC stage runs in a fresh ``mtl`` process, and the end-to-end tests start a hundred or so
of them: a module that every process imports but the default pipeline never uses costs its
import time in each. torchvision (with ``torch._dynamo``) is about 3.5 s CPU; only the
torchvision backbones need it, and they import it when one is built.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT

STAGE_MODULES = ("mtl.cli", "mtl.train", "mtl.baseline", "mtl.evaluate", "mtl.predict")


def test_stage_modules_do_not_import_torchvision() -> None:
    code = (f"import sys\nimport {', '.join(STAGE_MODULES)}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", f"expected no torchvision module, found {out.stdout}"
