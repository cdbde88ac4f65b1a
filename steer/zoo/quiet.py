"""Quiet loading of the shipped small models: diffusers' and transformers' progress bars off while
they load (a 10 MB folder loads in well under a second, so a bar is noise), the caller's setting
restored afterwards. Hub-sized models loaded by ``steer.pipelines.load`` keep their bars."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def quiet_loading():
    """Disable the diffusers / transformers progress bars inside the block, then restore them."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    before = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if before[0]:
            dlog.enable_progress_bar()
        if before[1]:
            tlog.enable_progress_bar()
