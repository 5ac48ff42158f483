"""Data for the course: the Shapes benchmark, COCO captions, the resized-image cache, the downloader.

* :mod:`~t2i_helpers.data.shapes`: generate the Shapes benchmark (COCO captions format, scorable attributes);
  :mod:`~t2i_helpers.data.shapes_zh`: its parallel Chinese captions (``captions_*.zh.json``);
* :mod:`~t2i_helpers.data.coco`: validate, load and inspect COCO-format caption datasets (Shapes too);
* :mod:`~t2i_helpers.data.cache`: decode + resize once into a uint8 array; fast, resumable batches;
* :mod:`~t2i_helpers.data.download`: fetch COCO 2017 (needs the internet; resumable, checked);
* :mod:`~t2i_helpers.data.evalset`: a split loaded for evaluation; :mod:`~t2i_helpers.data.images`:
  the one uint8 <-> [-1, 1] converter; :mod:`~t2i_helpers.data.batch`: what a training step reads.
"""
from t2i_helpers.data.batch import Batch
from t2i_helpers.data.cache import ImageCache, center_crop_resize
from t2i_helpers.data.loader import CachedLoader
from t2i_helpers.data.coco import CocoCaptionsDataset, collate_captions, load_captions_index, open_rgb, words
from t2i_helpers.data.download import KNOWN_FILES, annotations_for, download_coco, locate_coco
from t2i_helpers.data.evalset import EvalData, load_eval_data, sample_caption_ids
from t2i_helpers.data.images import to_float, to_pixels, to_uint8
from t2i_helpers.data.stats import inspect_dataset
from t2i_helpers.data.shapes import (COLORS, HELD_OUT_PAIRS, POSITION_WORDS, POSITIONS, SHAPES, SIZES, ShapesConfig,
                                     make_caption, make_shapes, mirror_caption, render, shapes_dataset)
from t2i_helpers.data.shapes_zh import english_annotation, make_caption_zh, write_chinese_captions, zh_path
from t2i_helpers.data.shapes_phrasings import (HELD_OUT_TEMPLATES, NP_HELD_OUT, NP_PARAPHRASE, PARAPHRASE_TEMPLATES,
                                               phrase_caption, phrasing_paths, standard_annotation, write_phrasing_files)
from t2i_helpers.errors import AssetMissingError, DatasetError

__all__ = ["Batch", "CachedLoader", "ImageCache", "center_crop_resize", "CocoCaptionsDataset", "collate_captions",
           "inspect_dataset", "load_captions_index", "open_rgb", "words", "KNOWN_FILES", "annotations_for",
           "download_coco", "locate_coco", "EvalData", "load_eval_data", "sample_caption_ids", "to_float",
           "to_pixels", "to_uint8", "COLORS", "HELD_OUT_PAIRS", "POSITION_WORDS", "POSITIONS", "SHAPES", "SIZES",
           "ShapesConfig", "make_caption", "make_shapes", "mirror_caption", "render", "shapes_dataset", "english_annotation", "make_caption_zh",
           "write_chinese_captions", "zh_path", "HELD_OUT_TEMPLATES", "NP_HELD_OUT", "NP_PARAPHRASE", "PARAPHRASE_TEMPLATES",
           "phrase_caption", "phrasing_paths", "standard_annotation", "write_phrasing_files",
           "AssetMissingError",
           "DatasetError"]
