"""One rank of the two-process CPU DDP check (tests/test_engine_ddp.py): trains a tiny model a few steps under
Lightning's ``ddp`` strategy (gloo) and saves what this rank holds. Lightning starts rank 1 by running this same
command again.

    python tests/ddp_worker.py OUT_DIR STEPS
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from paths import SAMPLE

import datasets
from engine.config import build_config, resolve_auto
from engine.system import NeuSSystem, RaySource

# Tiny: the check is about agreement between ranks, not quality. The grid refreshes every 2 steps from step 0,
# half of its cells at a time (random cells and jitter: where the ranks would drift apart).
SETTINGS = ["model.num_samples_per_ray=64", "model.occupancy.resolution=16", "model.occupancy.start_step=0",
            "model.occupancy.update_every=2", "model.occupancy.update_fraction=0.5",
            "model.geometry.encoding.n_levels=4", "model.geometry.encoding.log2_hashmap_size=12",
            "train.init_rays=64", "train.min_rays=32", "train.max_rays=128", "train.target_samples=1024"]


class SaveRankState(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer: L.Trainer, pl_module: NeuSSystem) -> None:
        origins, _, _, _ = pl_module.rays.sample(8)  # the rays this rank would draw next
        torch.save({"state": pl_module.model.state_dict(), "step": trainer.global_step, "next_rays": origins,
                    "world_size": trainer.world_size}, self.out / f"rank{trainer.global_rank}.pt")


def main(out: Path, steps: int) -> None:
    scene = datasets.load(SAMPLE, format="dtu", downscale=4)
    cfg = build_config("preview", "dtu", True, overrides=SETTINGS)
    resolve_auto(cfg, has_masks=True, device_type="cpu")
    L.seed_everything(int(cfg.seed), verbose=False)
    system = NeuSSystem(cfg, RaySource(scene.images, scene.masks, scene.K, scene.c2w))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[SaveRankState(out)])
    trainer.fit(system)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
