"""A pytest plugin (``-p timm_registry``) that registers this port's networks in timm's registry
before a test file is collected: tests/test_timm_models.py runs timm's own tests/test_models.py
with it."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hubconf  # noqa: E402

hubconf.register_timm()
