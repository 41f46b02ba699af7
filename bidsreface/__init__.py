"""bidsreface: de-identify head MRI in BIDS datasets by defacing and refacing."""

__version__ = "0.1.0"
__codeurl__ = "https://github.com/bidsreface/bidsreface"
