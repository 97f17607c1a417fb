"""Which training process this is. With ``train.devices > 1`` Lightning's DDP launcher starts the other ranks by
running the same command line again; those copies must train but neither report, write the run's files nor
export: only global rank 0 does (the command the user or the add-on started). No torch here, so the CLI can ask
before anything is loaded."""

from __future__ import annotations

import os
from collections.abc import Mapping

# Lightning's own order for a rank known before the process group exists (lightning.fabric.utilities.rank_zero):
# RANK (torchrun), LOCAL_RANK (Lightning's launcher), then the schedulers'.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_first_rank(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is global rank 0, the one that reports, writes the run's files and exports.

    True unless a DDP launcher marked it otherwise: the first rank variable set is not 0, or it runs on a node
    other than the first (``NODE_RANK`` > 0).
    """
    for key in _RANK_VARIABLES:
        value = environ.get(key, "").strip()
        if value:
            if value != "0":
                return False
            break
    return environ.get("NODE_RANK", "0").strip() in ("", "0")
