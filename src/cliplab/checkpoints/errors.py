"""The one exception type for unreadable, unsafe or mismatched checkpoints."""


class CheckpointError(ValueError):
    """A checkpoint could not be read safely or does not fit the model it claims to be."""
