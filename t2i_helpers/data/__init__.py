"""Data for the course: the Shapes benchmark, COCO captions, the resized-image cache, the downloader.

* :mod:`t2i_helpers.data.shapes`: generate the Shapes benchmark (COCO captions format, scorable attributes).
* :mod:`t2i_helpers.data.coco`: validate, load and inspect COCO-format caption datasets (Shapes too).
* :mod:`t2i_helpers.data.cache`: decode + resize once into a uint8 array; fast, resumable batches.
* :mod:`t2i_helpers.data.download`: fetch COCO 2017 (needs the internet; resumable, checked).

Submodules are imported on use, so ``import t2i_helpers.data.shapes`` does not load torch.
"""
