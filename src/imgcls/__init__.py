"""imgcls: from a folder of labelled images to a trained, evaluated image classifier."""
__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a saved bundle (a run folder or its model/ folder) as a Predictor with `.predict(images)`."""
    from .predict.predictor import Predictor

    return Predictor.load(path, device=device)
