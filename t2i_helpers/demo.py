"""What ``make demo`` runs: build the Shapes data, train a model briefly, write one sample grid per caption."""
from __future__ import annotations

import re
from pathlib import Path

from .config import pick, runs_dir
from .data.shapes import shapes_dataset  # noqa: F401  (was defined here; notebooks import it from data.shapes)

DEMO_CAPTIONS = (
    "a large red circle in the center",
    "a small blue square in the top left corner",
    "a green triangle at the bottom",
    "a yellow circle",
)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_demo(model: str = "diffusion", steps: int | None = None) -> Path:
    from .models import model_classes
    from .train import TrainConfig, load_run, pick_device, train
    from .viz import save_grid

    root = shapes_dataset()
    on_cpu = pick_device("auto").type == "cpu"
    config_cls, _ = model_classes(model)
    # Without a GPU the demo trains the small (smoke-sized) model so it finishes in minutes.
    model_config = config_cls.smoke() if on_cpu else config_cls()
    steps = steps or (pick(300, 60) if on_cpu else 3000)
    out = runs_dir() / f"demo-{model}"
    print(f"demo: training {model} for {steps} steps on {root.name} ({'CPU' if on_cpu else 'GPU'})", flush=True)
    train(model, root / "images", root / "annotations" / "captions_train.json", out,
          TrainConfig(steps=steps, batch_size=pick(32, 16) if on_cpu else 128, checkpoint_every=0, sample_every=0),
          model_config=model_config)
    run = load_run(out)
    for caption in DEMO_CAPTIONS:
        images = run.generate([caption] * 8, seed=0)
        path = save_grid(images, out / "demo" / f"{_slug(caption)}.png")
        print(f"  {caption!r}: {path}")
    print(f"demo: done; the run folder is {out}")
    return out
