"""The one exception of the converter."""


class ConversionError(ValueError):
    """Bad input for a conversion; the message names the file / tensor and what was expected."""
