"""The names a user chooses among on the command line, kept apart from the code that implements them.

`imgcls --help` lists them without importing torch (that import alone takes seconds on a small CPU);
each implementing module imports its names from here, so the two cannot drift apart.
"""
from __future__ import annotations

# data.augment.build_augment: what each preset does is described there.
AUGMENT_PRESETS = ("none", "shift", "seed", "standard", "strong", "speedrun")

# models.classifier.tta_logits. flip: average with the mirrored image, a cheap and reliable gain for most
# photos. flip-shift: also the mirrored pair shifted a 32nd of the side up-left and down-right (the CIFAR-10
# speed runs' test-time views, Jordan 2024); 3x the cost of flip for a few tenths of a point more.
TTA_MODES = ("none", "flip", "flip-shift")

# train.tracking: csv is history.csv alone, which every run writes.
LOGGERS = ("csv", "tensorboard", "mlflow")

# explain.maps.explain: its docstring says what each method shows.
EXPLAIN_METHODS = ("gradcam", "gradcam++", "saliency", "smoothgrad", "integrated-gradients", "blocks",
                   "feature-maps", "filters")

# predict.predictor.Predictor.load. onnx: the bundle's model.onnx (from `imgcls export`) run by onnxruntime;
# onnx-int8: its model.int8.onnx (from `imgcls export --int8`), quantised and checked on the validation split.
ENGINES = ("torch", "onnx", "onnx-int8")
