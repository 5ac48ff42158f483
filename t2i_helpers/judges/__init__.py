"""The judges: networks trained on the data itself to score what the generators draw, kept apart from them.

* :mod:`~t2i_helpers.judges.classifier`: reads colour, shape, size and position from a Shapes image
  (attribute accuracy, and the proxy FID's features);
* :mod:`~t2i_helpers.judges.clip`: a small CLIP-style image-caption model (R-precision, retrieval).

Both train once per data set with :mod:`~t2i_helpers.judges.fitting` and are cached.
"""
from t2i_helpers.judges.classifier import (DRAWN_THRESHOLD, AttributeClassifier, ClassifierConfig,
                                           load_or_train_attribute_classifier, object_drawn, predict_attributes,
                                           train_attribute_classifier)
from t2i_helpers.judges.clip import ClipConfig, ContrastiveModel, best_captions, load_or_train_clip, train_clip

__all__ = ["DRAWN_THRESHOLD", "AttributeClassifier", "ClassifierConfig", "load_or_train_attribute_classifier",
           "object_drawn", "predict_attributes", "train_attribute_classifier", "ClipConfig", "ContrastiveModel",
           "best_captions", "load_or_train_clip", "train_clip"]
