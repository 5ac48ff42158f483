"""Evaluation a thesis can cite: FID (or a labelled offline proxy), attribute accuracy, R-precision,
and human ratings with their uncertainty.

* :func:`evaluate_run` / :func:`evaluate_images` (:mod:`~t2i_helpers.evaluation.evaluate`): one report per run;
* :mod:`~t2i_helpers.evaluation.inception`: FID's feature network and cached real statistics;
* :mod:`~t2i_helpers.evaluation.ratings`: a rating panel for people, and its summary;
* :mod:`~t2i_helpers.evaluation.studio` (+ ``studio_widgets``): notebook 07's caption-to-image studio,
  with the judge's reading under every image;
* :mod:`~t2i_helpers.evaluation.captioning`: notebook 08's image-to-text scores (attribute match,
  BLEU-4 / CIDEr, cycle consistency through a generator);
* the numbers themselves are pure functions in :mod:`t2i_helpers.metrics` (re-exported here).
"""
from t2i_helpers.evaluation.captioning import (attribute_match, caption_scores, constant_caption, cycle_consistency,
                                               cycle_row, match_row, nearest_neighbour_captions, read_back,
                                               retrieve_captions)
from t2i_helpers.evaluation.evaluate import error_figure, evaluate_images, evaluate_run, format_report
from t2i_helpers.evaluation.inception import (INCEPTION_URL, extract_features, fid_from_images, inception_network,
                                              real_statistics)
from t2i_helpers.evaluation.ratings import RatingPanel, summarise_ratings
from t2i_helpers.evaluation.studio import Drawing, Studio, asked_attributes, check_caption, describe_reading
from t2i_helpers.evaluation.studio_widgets import ComparePanel, StudioPanel, rating_panel, ratings_summary
from t2i_helpers.metrics import (NOTHING, FeatureStats, FIDProtocol, attribute_accuracy, attribute_accuracy_by,
                                 attribute_errors, caption_fits, clip_score, describe_errors, error_examples,
                                 frechet_distance, r_precision)

__all__ = ["error_figure", "evaluate_images", "evaluate_run", "format_report", "INCEPTION_URL", "extract_features",
           "fid_from_images", "inception_network", "real_statistics", "RatingPanel", "summarise_ratings", "Drawing",
           "Studio", "asked_attributes", "check_caption", "describe_reading", "ComparePanel", "StudioPanel",
           "rating_panel", "ratings_summary", "NOTHING",
           "FeatureStats", "FIDProtocol", "attribute_accuracy", "attribute_accuracy_by", "attribute_errors",
           "caption_fits", "clip_score", "describe_errors", "error_examples", "frechet_distance", "r_precision",
           "attribute_match", "caption_scores", "constant_caption", "cycle_consistency", "cycle_row", "match_row",
           "nearest_neighbour_captions", "read_back", "retrieve_captions"]
